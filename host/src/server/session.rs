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
use super::login::{self, Admitted, Bound, Gate, LoginError, Services, SessionCtx};
use super::profile::ServerProfile;
use super::{Shared, State, change_user, kill, relay, reuse, split};
use crate::auth::{self, Sha1Password};
use crate::backend::LoginRequest;
use crate::conn::PacketStream;
use crate::metrics::Outcome;
use crate::pool::Pool;
use crate::protocol::{
    CapabilityFlags, Greeting, HandshakeResponse, NATIVE_PASSWORD_PLUGIN, SSL_REQUEST_LEN,
};

/// Largest packet a client may send before it is logged in.
const MAX_CLIENT_LOGIN_PACKET: usize = 16 * 1024;

/// A logged-in client session, to its close: its greeting id (for KILL),
/// how it relays (bound to one backend session, or statement by statement
/// for a split pool), its timeouts and what it relayed. Nothing of the
/// login is kept (but a split pool's credential, which its later backend
/// sessions log in with), not even the state it logged in with (a reload
/// frees what it replaced).
struct Session {
    registration: kill::Registration,
    mode: Mode,
    timeouts: relay::Timeouts,
    /// Bytes relayed from and to the client.
    relayed: (u64, u64),
}

/// How a session relays.
// One per session, in its task either way: boxing the larger variant would
// only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Mode {
    /// Its streams bound to its backend session with their claims (the
    /// part the relay and COM_CHANGE_USER pass back and forth), and what
    /// COM_CHANGE_USER needs.
    Bound { bound: Bound, ctx: SessionCtx },
    /// A split pool's: statement by statement, over backend sessions of
    /// its own.
    Split { split: Box<split::SplitSession> },
}

impl Session {
    /// Relays, and handles each COM_CHANGE_USER, until the session ends;
    /// why it ended.
    async fn run(
        self,
        shared: &Arc<Shared>,
        peer: SocketAddr,
        policy: Option<&str>,
    ) -> (relay::End, (u64, u64)) {
        let Self {
            registration,
            mode,
            timeouts,
            mut relayed,
        } = self;
        let mut mode = mode;
        loop {
            mode = match mode {
                Mode::Split { mut split } => {
                    let cx = split::Cx {
                        shared,
                        registration: &registration,
                        timeouts,
                        peer,
                        policy,
                    };
                    // Boxed (as the relay below): an idle session keeps
                    // only what its mode needs.
                    let exit = Box::pin(split.run(&cx)).await;
                    relayed.0 += split.relayed.0;
                    relayed.1 += split.relayed.1;
                    match exit {
                        split::Exit::End(end) => return (end, relayed),
                        split::Exit::Rebound(rebound) => {
                            let split::Rebound { bound, ctx } = *rebound;
                            Mode::Bound { bound, ctx }
                        }
                    }
                }
                Mode::Bound { bound, mut ctx } => {
                    registration.moved(kill::Place {
                        backend: bound.lease.backend().addr,
                        thread: ctx.backend_thread,
                    });
                    let changing =
                        match Box::pin(relay_once(bound, &ctx, timeouts, shared, &mut relayed))
                            .await
                        {
                            Ok(changing) => changing,
                            Err(end) => return (end, relayed),
                        };
                    // Boxed: rare, and its state is large.
                    let next = Box::pin(change_user::handle(
                        changing, &mut ctx, shared, peer, policy,
                    ))
                    .await;
                    match next {
                        Some(change_user::Next::Bound(bound)) => Mode::Bound { bound, ctx },
                        Some(change_user::Next::Split(split)) => Mode::Split { split },
                        None => return (relay::End::ChangeUser, relayed),
                    }
                }
            };
        }
    }
}

/// The client's verified login, routed.
struct Authenticated {
    response: HandshakeResponse,
    password: Sha1Password,
    claim: UserClaim,
    pool: Arc<Pool>,
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
        let Some(session) = Box::pin(log_in(socket, peer, shared, policy, started, pending)).await
        else {
            return;
        };
        let (end, (from_client, to_client)) = session.run(shared, peer, policy).await;
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

/// Relays `bound` until the session ends (`Err`, why) or its client sends
/// COM_CHANGE_USER (`Ok`, the streams with that command first); adds the
/// bytes relayed to `totals`. A client that quits leaves its backend
/// session kept, if its pool keeps them.
async fn relay_once(
    bound: Bound,
    ctx: &SessionCtx,
    timeouts: relay::Timeouts,
    shared: &Arc<Shared>,
    totals: &mut (u64, u64),
) -> Result<Bound, relay::End> {
    let metrics = &shared.metrics;
    let Bound {
        client,
        client_rest,
        backend,
        backend_rest,
        lease,
        user,
    } = bound;
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
    let (stats, after) = relay::relay(client, client_rest, backend, backend_rest, options).await;
    totals.0 += stats.from_client;
    totals.1 += stats.to_client;
    if stats.end == relay::End::IdleTimeout {
        metrics
            .idle_closed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    if stats.end == relay::End::QueryTimeout {
        super::runaway::kill(shared, lease.backend().addr, ctx.backend_thread);
    }
    match after {
        relay::After::ChangeUser {
            client,
            client_rest,
            backend,
        } => Ok(Bound {
            client,
            client_rest,
            backend,
            backend_rest: bytes::BytesMut::new(),
            lease,
            user,
        }),
        relay::After::Quit { backend } => {
            let quitting = reuse::Quitting {
                stream: backend,
                thread_id: ctx.backend_thread,
                nonce: &ctx.backend_nonce,
                capabilities: ctx.backend_caps,
                shape: ctx.shape(),
            };
            reuse::keep(quitting, lease.backend().addr, &ctx.pool, metrics).await;
            Err(stats.end)
        }
        relay::After::Close => Err(stats.end),
    }
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
) -> Option<Session> {
    let state = shared.state();
    let metrics = &shared.metrics;
    let deadline = Deadline::now() + state.config.login_timeout();
    let client = PacketStream::new(socket, MAX_CLIENT_LOGIN_PACKET);
    let outcome = timeout_at(
        deadline,
        login(client, peer, shared, &state, policy, deadline),
    )
    .await;
    // The login is over, either way: no longer pending.
    drop(pending);
    let session = match outcome {
        Ok(Ok(session)) => session,
        Ok(Err((
            mut client,
            LoginError::Deny {
                err,
                seq,
                outcome,
                reason,
            },
        ))) => {
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
        Ok(Err((_, LoginError::Close(reason)))) => {
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
            login::throttle_failure(shared, &state, peer).await;
            warn!("login timed out; closing");
            return None;
        }
    };
    metrics.login(Outcome::Ok);
    metrics.login_latency.observe(started.elapsed());
    Some(session)
}

/// Returns the client's stream with an error, for the answer.
macro_rules! or_answer {
    ($client:ident, $step:expr) => {
        match $step {
            Ok(v) => v,
            Err(e) => return Err(($client, e)),
        }
    };
}

/// Greets, authenticates and routes the client, logs in to a backend and
/// answers OK; the session, or the client's stream and why not.
async fn login(
    mut client: PacketStream,
    peer: SocketAddr,
    shared: &Shared,
    state: &State,
    policy: Option<&str>,
    deadline: Deadline,
) -> Result<Session, (PacketStream, LoginError)> {
    let nonce = auth::generate_nonce();
    let profile = shared.profile.get();
    // The greeting's connection id, held until the session ends.
    let registration = shared.sessions.reserve();
    let id = registration.id();
    let plugin = state.config.auth.default_plugin.name();
    let tls = state.tls.is_some();
    or_answer!(
        client,
        greet(&mut client, &profile, &nonce, id, tls, plugin).await
    );
    let gate = Gate {
        shared,
        state,
        peer,
        policy,
    };
    let auth = or_answer!(client, authenticate(&mut client, gate, &nonce).await);
    let span = tracing::Span::current();
    let pool = Arc::clone(&auth.pool);
    span.record("pool", pool.name.as_str());
    if let Some(pools) = pool.sessions_split() {
        let login = SplitLogin {
            state,
            nonce,
            profile: &profile,
            deadline,
            gate: &gate,
        };
        return Box::pin(log_in_split(
            client,
            auth,
            pools.clone(),
            registration,
            login,
        ))
        .await;
    }
    let request = LoginRequest {
        client: &auth.response,
        password: &auth.password,
        offered: profile.capabilities,
        offered_mariadb: profile.mariadb_capabilities,
    };
    let metrics = &shared.metrics;
    let opened = login::open_backend(
        &pool,
        &request,
        auth.next_seq,
        (state.config.connect_timeout(), metrics),
        deadline,
    )
    .await;
    let (lease, mut backend) = or_answer!(client, opened);
    span.record("backend", field::display(lease.backend().addr));
    // The backend accepted the login: only now are the address's failures
    // forgotten.
    gate.succeeded();
    // Only now does the client hear OK: the backend's own OK (its status
    // flags and session state), in the client's sequence.
    let answered = client.write(auth.next_seq, &backend.ok).await;
    or_answer!(client, answered.map_err(|e| LoginError::client(e.into())));
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
    let timeouts = relay::Timeouts::from_config(&state.config);
    let bound = Bound::new((client, backend.stream), lease, auth.claim);
    Ok(Session {
        registration,
        mode: Mode::Bound { bound, ctx },
        timeouts,
        relayed: (0, 0),
    })
}

/// What a split pool's login needs of the login around it.
struct SplitLogin<'a> {
    state: &'a State,
    nonce: [u8; auth::NONCE_LEN],
    profile: &'a ServerProfile,
    deadline: Deadline,
    gate: &'a Gate<'a>,
}

/// The backend side of a split pool's login: a backend session in the
/// reader pool (or, if none can be had, the writer pool), and only then
/// the client's OK.
async fn log_in_split(
    mut client: PacketStream,
    auth: Authenticated,
    pools: std::sync::Arc<crate::pool::Split>,
    registration: kill::Registration,
    login: SplitLogin<'_>,
) -> Result<Session, (PacketStream, LoginError)> {
    let SplitLogin {
        state,
        nonce,
        profile,
        deadline,
        gate,
    } = login;
    let metrics = &gate.shared.metrics;
    let credential = Box::new(split::Credential {
        response: auth.response,
        password: auth.password,
        offered: profile.capabilities,
        offered_mariadb: profile.mariadb_capabilities,
    });
    let request = credential.request();
    let opened =
        split::open_first(&pools, &request, auth.next_seq, (state, metrics), deadline).await;
    let (role, first) = or_answer!(client, opened);
    tracing::Span::current().record("backend", field::display(first.backend()));
    gate.succeeded();
    let answered = client.write(auth.next_seq, first.ok()).await;
    or_answer!(client, answered.map_err(|e| LoginError::client(e.into())));
    let split = split::SplitSession::new(
        client,
        (role, first),
        (credential, nonce, auth.claim),
        pools,
        metrics,
    );
    Ok(Session {
        registration,
        mode: Mode::Split {
            split: Box::new(split),
        },
        timeouts: relay::Timeouts::from_config(&state.config),
        relayed: (0, 0),
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

/// Phase 2: the handshake response (after TLS, if the client asks for
/// it), then the login gate: authentication and route.
async fn authenticate(
    client: &mut PacketStream,
    gate: Gate<'_>,
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
        let Some(tls) = &gate.state.tls else {
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
    let plugin_auth = response
        .capabilities
        .contains(CapabilityFlags::CLIENT_PLUGIN_AUTH);
    let attempt = login::Attempt {
        user: response.username.as_str(),
        client_plugin: plugin_auth.then(|| {
            response
                .auth_plugin
                .as_deref()
                .unwrap_or(NATIVE_PASSWORD_PLUGIN)
        }),
        data: response.auth_response.clone(),
        can_switch: plugin_auth,
        nonce,
        seq: seq + 1,
    };
    let Admitted {
        password,
        claim,
        pool,
        seq,
    } = login::admit(client, &gate, attempt, response.database.as_deref()).await?;
    Ok(Authenticated {
        response,
        password,
        claim,
        pool,
        next_seq: seq,
    })
}
