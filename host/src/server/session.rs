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

use super::profile::ServerProfile;
use super::{Shared, codes, relay};
use crate::auth::{self, Sha1Password};
use crate::backend::{self, BackendError, BackendSession, LoginRequest};
use crate::conn::{ConnError, PacketStream};
use crate::policy::RouteError;
use crate::pool::{BackendLease, Pool};
use crate::protocol::{
    AuthSwitchRequest, CapabilityFlags, ErrPacket, Greeting, HandshakeResponse,
    NATIVE_PASSWORD_PLUGIN,
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
        reason: String,
    },
    /// Close without an answer (the client broke the protocol or left).
    Close(String),
}

impl LoginError {
    fn deny(err: ErrPacket, seq: u8, reason: impl Into<String>) -> Self {
        Self::Deny {
            err,
            seq,
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
}

/// The client's verified login.
struct Authenticated {
    response: HandshakeResponse,
    password: Sha1Password,
    next_seq: u8,
}

/// Serves one client connection to its end.
pub(super) async fn serve(socket: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let span = info_span!(
        "session",
        client = %peer,
        user = field::Empty,
        pool = field::Empty,
        backend = field::Empty
    );
    async move {
        let started = Instant::now();
        let deadline = Deadline::now() + shared.config.login_timeout();
        let mut client = PacketStream::new(socket, MAX_CLIENT_LOGIN_PACKET);
        let outcome = timeout_at(deadline, login(&mut client, peer, &shared, deadline)).await;
        let established = match outcome {
            Ok(Ok(e)) => e,
            Ok(Err(LoginError::Deny { err, seq, reason })) => {
                warn!(code = err.code, "login refused: {reason}");
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(1),
                    client.write(seq, &err.encode()),
                )
                .await;
                return;
            }
            Ok(Err(LoginError::Close(reason))) => {
                warn!("login abandoned: {reason}");
                return;
            }
            Err(_) => {
                warn!("login timed out; closing");
                return;
            }
        };
        let Established { backend, lease } = established;
        let (client_tcp, client_rest) = client.into_parts();
        let (backend_tcp, backend_rest) = backend.stream.into_parts();
        // Nothing of the login is kept while the session relays.
        drop((backend.greeting, backend.ok));
        let stats = relay::relay(client_tcp, client_rest, backend_tcp, backend_rest).await;
        // The backend counts this session until the relay is over.
        drop(lease);
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

async fn login(
    client: &mut PacketStream,
    peer: SocketAddr,
    shared: &Shared,
    deadline: Deadline,
) -> Result<Established, LoginError> {
    let nonce = auth::generate_nonce();
    let profile = shared.profile.get();
    greet(client, &profile, &nonce, shared.connection_id()).await?;
    let auth = authenticate(client, peer, shared, &nonce).await?;
    let span = tracing::Span::current();
    span.record("user", auth.response.username.as_str());
    let pool = route(shared, &auth, peer).await?;
    span.record("pool", pool.name.as_str());
    let (lease, backend) = open_backend(&pool, &auth, &profile, shared, deadline).await?;
    span.record("backend", field::display(lease.backend().addr));
    // Only now does the client hear OK: the backend's own OK (its status
    // flags and session state), in the client's sequence.
    client
        .write(auth.next_seq, &backend.ok)
        .await
        .map_err(|e| LoginError::client(e.into()))?;
    Ok(Established { backend, lease })
}

/// Phase 1: the greeting, with a fresh nonce and the backends' identity.
async fn greet(
    client: &mut PacketStream,
    profile: &ServerProfile,
    nonce: &[u8; auth::NONCE_LEN],
    connection_id: u32,
) -> Result<(), LoginError> {
    let greeting = Greeting {
        server_version: profile.version.clone(),
        connection_id,
        auth_data: nonce.to_vec(),
        capabilities: profile.capabilities,
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
    nonce: &[u8; auth::NONCE_LEN],
) -> Result<Authenticated, LoginError> {
    let packet = client.read_seq(1).await.map_err(LoginError::client)?;
    let response = HandshakeResponse::decode(&packet.payload)
        .map_err(|e| LoginError::Close(format!("bad handshake response: {e}")))?;
    let plugin = response
        .auth_plugin
        .as_deref()
        .unwrap_or(NATIVE_PASSWORD_PLUGIN);
    let (auth_data, next_seq) = if plugin == NATIVE_PASSWORD_PLUGIN {
        (response.auth_response.clone(), 2)
    } else if response
        .capabilities
        .contains(CapabilityFlags::CLIENT_PLUGIN_AUTH)
    {
        let switch = AuthSwitchRequest {
            plugin: NATIVE_PASSWORD_PLUGIN.into(),
            data: nonce.to_vec(),
        };
        client
            .write(2, &switch.encode())
            .await
            .map_err(|e| LoginError::client(e.into()))?;
        let p = client.read_seq(3).await.map_err(LoginError::client)?;
        (p.payload.to_vec(), 4)
    } else {
        return Err(LoginError::Close(format!(
            "client uses auth plugin '{plugin}' and cannot switch"
        )));
    };
    let host = peer.ip().to_string();
    let user = response.username.as_str();
    let verified = match shared.users.get(user) {
        Some(stored) => auth::verify_native(stored, nonce, &auth_data),
        None => {
            auth::verify_unknown_user(nonce, &auth_data);
            None
        }
    };
    match verified {
        Some(password) => Ok(Authenticated {
            password,
            next_seq,
            response,
        }),
        None => Err(LoginError::deny(
            codes::access_denied(user, &host, !auth_data.is_empty()),
            next_seq,
            format!("access denied for user '{user}'"),
        )),
    }
}

/// Phase 3: the policy chooses the pool.
async fn route(
    shared: &Shared,
    auth: &Authenticated,
    peer: SocketAddr,
) -> Result<Arc<Pool>, LoginError> {
    let user = auth.response.username.as_str();
    let db = auth.response.database.as_deref();
    let seq = auth.next_seq;
    let policy = &shared.policy;
    match policy.route(user, db, &peer.to_string()).await {
        Ok(name) => match shared.pools.get(&name) {
            Some(pool) => Ok(Arc::clone(pool)),
            None => Err(LoginError::deny(
                codes::policy_failed(
                    user,
                    &format!("it chose pool '{name}', which is not configured"),
                ),
                seq,
                format!("policy {} chose unknown pool '{name}'", policy.name()),
            )),
        },
        Err(RouteError::Refused(text)) => Err(LoginError::deny(
            codes::policy_refused(&text),
            seq,
            format!("policy {} refused: {text}", policy.name()),
        )),
        Err(RouteError::Failed(why)) => Err(LoginError::deny(
            codes::policy_failed(user, &why),
            seq,
            format!("policy {} failed: {why}", policy.name()),
        )),
    }
}

/// Phase 4: a backend of the pool, by the pool's balancing order; a backend
/// that cannot be reached is skipped for the next one.
async fn open_backend(
    pool: &Pool,
    auth: &Authenticated,
    offered: &ServerProfile,
    shared: &Shared,
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
        tried += 1;
        let lease = pool.lease(&candidate);
        let attempt_deadline = deadline.min(now + shared.config.connect_timeout());
        let result = timeout_at(attempt_deadline, backend::open(candidate.addr, &request))
            .await
            .unwrap_or(Err(BackendError::Timeout));
        match result {
            Ok(session) => {
                if candidate.mark_failing(false) {
                    info!(backend = %candidate.addr, "backend is reachable again");
                }
                return Ok((lease, session));
            }
            Err(e) if e.is_backend_fault() => {
                if candidate.mark_failing(true) {
                    warn!(backend = %candidate.addr, error = %e, "backend failed; trying the next one");
                } else {
                    info!(backend = %candidate.addr, error = %e, "backend still failing");
                }
            }
            Err(BackendError::Refused(err)) => {
                let reason = format!(
                    "backend {} refused: {} {}",
                    candidate.addr, err.code, err.message
                );
                return Err(LoginError::deny(err, seq, reason));
            }
            Err(e) => {
                return Err(LoginError::deny(
                    codes::backend_unsupported(&e.to_string()),
                    seq,
                    format!("backend {}: {e}", candidate.addr),
                ));
            }
        }
    }
    Err(LoginError::deny(
        codes::no_backend(&pool.name, tried),
        seq,
        format!("no backend of pool '{}' available", pool.name),
    ))
}
