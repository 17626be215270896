//! COM_CHANGE_USER: a logged-in client becomes another user.
//!
//! The relay stops at the command (see [`super::relay`]) and hands both
//! streams here. Switchyard verifies the new credentials against its own
//! nonce (the session's), calls the policy again for the new user and
//! database, and then:
//! - same pool: re-authenticates the backend session in place
//!   (COM_CHANGE_USER with a token for the backend's own nonce);
//! - another pool: opens a backend session in that pool, and only once it
//!   is logged in lets the old one go: kept for a later login if its pool
//!   keeps sessions (`idle_sessions`), closed otherwise.
//!
//! Either way the client hears the backend's OK in its own sequence. Any
//! refusal (wrong password, blocked address, user limit, policy, no
//! backend in the new pool, the backend's own refusal) is an ERR after
//! which the session ends, as MariaDB leaves a session whose
//! COM_CHANGE_USER failed unusable: a session cannot be used to guess
//! passwords one COM_CHANGE_USER after another. A wrong password counts
//! towards the client address's throttle, and a blocked address cannot
//! authenticate this way either.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::time::{Instant as Deadline, timeout_at};
use tracing::{field, info, warn};

use super::limits::UserClaim;
use super::login::{self, Admitted, Bound, Gate, LoginError, Services, SessionCtx};
use super::{Shared, reuse, split};
use crate::backend::{self, BackendError, LoginRequest, MAX_LOGIN_PACKET};
use crate::conn::PacketStream;
use crate::metrics::{ChangeUserOutcome, Metrics};
use crate::pool::{BackendLease, Pool};
use crate::protocol::{
    CapabilityFlags, ChangeUser, HandshakeResponse, MariaDbCapabilities, NATIVE_PASSWORD_PLUGIN,
};

/// Largest COM_CHANGE_USER accepted.
const MAX_CHANGE_USER_PACKET: usize = 16 * 1024;

/// What a step of the exchange decided.
enum Step {
    /// The session goes on as the new user, on its backend session.
    Reauthenticated { user: UserClaim },
    /// The session goes on as the new user, on a new backend session; the
    /// old one is kept for a later login (see [`reuse`]) or closed.
    Moved {
        backend: PacketStream,
        lease: BackendLease,
        user: UserClaim,
        left: Left,
    },
    /// The session goes on as the new user in a split pool, on the first
    /// backend session opened there; the old one is kept or closed.
    Split {
        first: (split::Role, split::First),
        credential: Box<split::Credential>,
        pools: std::sync::Arc<crate::pool::Split>,
        user: UserClaim,
        left: Left,
    },
}

/// How the session goes on after COM_CHANGE_USER.
pub(super) enum Next {
    /// Bound to one backend session.
    Bound(Bound),
    /// Statement by statement, in a split pool.
    Split(Box<split::SplitSession>),
}

/// What the session knew of the backend session it moved away from.
struct Left {
    thread_id: u32,
    nonce: Box<[u8]>,
    capabilities: CapabilityFlags,
    shape: reuse::Shape,
    pool: Arc<Pool>,
}

/// Keeps the backend session a move left, if its pool keeps sessions and
/// nothing of it is waiting to be read (its at-rest check comes when a
/// login takes it over); otherwise closes it with COM_QUIT.
async fn leave(backend: PacketStream, lease: &BackendLease, left: Left, metrics: &Metrics) {
    if left.pool.idle_sessions == 0 || backend.has_buffered() {
        return reuse::quit(backend).await;
    }
    let (stream, _) = backend.into_parts();
    let quitting = reuse::Quitting {
        stream,
        thread_id: left.thread_id,
        nonce: &left.nonce,
        capabilities: left.capabilities,
        shape: left.shape,
    };
    reuse::keep(quitting, lease.backend().addr, &left.pool, metrics).await;
}

/// Handles the COM_CHANGE_USER at the start of `bound.client_rest`;
/// `None` when the session is over.
pub(super) async fn handle(
    bound: Bound,
    ctx: &mut SessionCtx,
    shared: &Arc<Shared>,
    peer: SocketAddr,
    policy: Option<&str>,
) -> Option<Next> {
    let Bound {
        client,
        client_rest,
        backend,
        backend_rest,
        lease,
        // Given back when the new user's claim replaces it (or the
        // session ends).
        user: _old_user,
    } = bound;
    let mut client = PacketStream::from_parts(client, client_rest, MAX_CHANGE_USER_PACKET);
    let mut backend = PacketStream::from_parts(backend, backend_rest, MAX_LOGIN_PACKET);
    let state = shared.state();
    let deadline = Deadline::now() + state.config.login_timeout();
    let outcome = timeout_at(
        deadline,
        exchange(
            &mut client,
            &mut backend,
            ctx,
            shared,
            peer,
            policy,
            deadline,
        ),
    )
    .await;
    let metrics = &shared.metrics;
    let step = match outcome {
        Ok(Ok(step)) => {
            metrics.change_user(match step {
                Step::Reauthenticated { .. } => ChangeUserOutcome::InPlace,
                _ => ChangeUserOutcome::Moved,
            });
            step
        }
        Ok(Err(e)) => {
            give_up(Some(e), &mut client, metrics).await;
            return None;
        }
        Err(_) => {
            give_up(None, &mut client, metrics).await;
            return None;
        }
    };
    go_on(step, (client, backend, lease), ctx, metrics).await
}

/// How the session goes on after the exchange's `step`; the old claims go
/// when replaced, and the old backend session only now, with the client
/// answered.
async fn go_on(
    step: Step,
    (client, backend, lease): (PacketStream, PacketStream, BackendLease),
    ctx: &SessionCtx,
    metrics: &Metrics,
) -> Option<Next> {
    let (backend, lease, user) = match step {
        Step::Reauthenticated { user: new_user } => (backend, lease, new_user),
        Step::Moved {
            backend: new_backend,
            lease: new_lease,
            user: new_user,
            left,
        } => {
            leave(backend, &lease, left, metrics).await;
            (new_backend, new_lease, new_user)
        }
        Step::Split {
            first,
            credential,
            pools,
            user,
            left,
        } => {
            leave(backend, &lease, left, metrics).await;
            let session = split::SplitSession::new(
                client,
                first,
                (credential, ctx.nonce, user),
                pools,
                metrics,
            );
            return Some(Next::Split(Box::new(session)));
        }
    };
    Some(Next::Bound(Bound::new((client, backend), lease, user)))
}

/// Logs and counts a COM_CHANGE_USER that did not go through (`None`: it
/// timed out), and answers a refusal; the session then ends.
pub(super) async fn give_up(
    failure: Option<LoginError>,
    client: &mut PacketStream,
    metrics: &Metrics,
) {
    match failure {
        Some(LoginError::Deny {
            err, seq, reason, ..
        }) => {
            warn!(
                code = err.code,
                "COM_CHANGE_USER refused; closing the session: {}",
                crate::logging::escape_controls(&reason)
            );
            metrics.change_user(ChangeUserOutcome::Refused);
            let _ = timeout_at(
                Deadline::now() + std::time::Duration::from_secs(1),
                client.write(seq, &err.encode()),
            )
            .await;
        }
        Some(LoginError::Close(reason)) => {
            warn!(
                "COM_CHANGE_USER failed; closing the session: {}",
                crate::logging::escape_controls(&reason)
            );
            metrics.change_user(ChangeUserOutcome::Failed);
        }
        None => {
            warn!("COM_CHANGE_USER timed out; closing the session");
            metrics.change_user(ChangeUserOutcome::Failed);
        }
    }
}

/// The login gate's attempt for the COM_CHANGE_USER `request` of a
/// session with capabilities `caps` greeted with `nonce`.
pub(super) fn attempt<'a>(
    request: &'a ChangeUser,
    caps: CapabilityFlags,
    nonce: &'a [u8; crate::auth::NONCE_LEN],
) -> login::Attempt<'a> {
    let plugin_auth = caps.contains(CapabilityFlags::CLIENT_PLUGIN_AUTH);
    login::Attempt {
        user: &request.username,
        client_plugin: plugin_auth.then(|| {
            request
                .auth_plugin
                .as_deref()
                .unwrap_or(NATIVE_PASSWORD_PLUGIN)
        }),
        data: request.auth_response.clone(),
        can_switch: plugin_auth,
        nonce,
        seq: 1,
    }
}

/// Verify, route, re-authenticate or reconnect.
async fn exchange(
    client: &mut PacketStream,
    backend: &mut PacketStream,
    ctx: &mut SessionCtx,
    shared: &Shared,
    peer: SocketAddr,
    policy: Option<&str>,
    deadline: Deadline,
) -> Result<Step, LoginError> {
    let packet = client.read_seq(0).await.map_err(LoginError::client)?;
    let request = ChangeUser::decode(&packet.payload, ctx.capabilities)
        .map_err(|e| LoginError::Close(format!("bad COM_CHANGE_USER: {e}")))?;
    let state = shared.state();
    let attempt = attempt(&request, ctx.capabilities, &ctx.nonce);
    let gate = Gate {
        shared,
        state: &state,
        peer,
        policy,
    };
    let admitted = login::admit(client, &gate, attempt, request.database.as_deref()).await?;
    if admitted.pool.sessions_split().is_some() {
        return to_split(client, (ctx, &request), admitted, gate, deadline).await;
    }
    if Arc::ptr_eq(&admitted.pool, &ctx.pool) {
        in_place(client, backend, (ctx, &request), admitted, gate).await
    } else {
        move_to_pool(client, (ctx, &request), admitted, gate, deadline).await
    }
}

/// Same pool: the backend session re-authenticates as the new user
/// (COM_CHANGE_USER with a token for its own nonce).
async fn in_place(
    client: &mut PacketStream,
    backend: &mut PacketStream,
    (ctx, request): (&SessionCtx, &ChangeUser),
    admitted: Admitted,
    gate: Gate<'_>,
) -> Result<Step, LoginError> {
    let Admitted {
        password,
        claim,
        pool,
        seq,
    } = admitted;
    let ok = backend::change_user(
        backend,
        &ctx.backend_nonce,
        ctx.backend_caps,
        request,
        &password,
    )
    .await;
    match ok {
        Ok(ok) => {
            gate.succeeded();
            client
                .write(seq, &ok)
                .await
                .map_err(|e| LoginError::client(e.into()))?;
            tracing::Span::current().record("user", request.username.as_str());
            info!(pool = %pool.name, "COM_CHANGE_USER: re-authenticated the backend session");
            Ok(Step::Reauthenticated { user: claim })
        }
        Err(BackendError::Refused(err)) => {
            // The backend's session is in no known state: answer and end.
            let _ = client.write(seq, &err.encode()).await;
            Err(LoginError::Close(format!(
                "the backend refused COM_CHANGE_USER: {} {}",
                err.code, err.message
            )))
        }
        Err(e) => Err(LoginError::Close(format!(
            "backend COM_CHANGE_USER failed: {e}"
        ))),
    }
}

/// Another pool: a backend session there, logged in as the new user, before
/// the old one is let go.
async fn move_to_pool(
    client: &mut PacketStream,
    (ctx, request): (&mut SessionCtx, &ChangeUser),
    admitted: Admitted,
    gate: Gate<'_>,
    deadline: Deadline,
) -> Result<Step, LoginError> {
    let Admitted {
        password,
        claim,
        pool,
        seq,
    } = admitted;
    let response = new_response(handshake_of(ctx), request);
    let request_login = LoginRequest {
        client: &response,
        password: &password,
        offered: ctx.offered,
        offered_mariadb: ctx.offered_mariadb,
    };
    let (lease, session) =
        open_and_answer(client, (&pool, &request_login, seq), &gate, deadline).await?;
    let span = tracing::Span::current();
    span.record("user", request.username.as_str());
    span.record("pool", pool.name.as_str());
    span.record("backend", field::display(lease.backend().addr));
    info!("COM_CHANGE_USER: moved the session to another pool");
    let left = Left {
        thread_id: ctx.backend_thread,
        nonce: std::mem::replace(&mut ctx.backend_nonce, session.nonce.into_boxed_slice()),
        capabilities: ctx.backend_caps,
        shape: ctx.shape(),
        pool: std::mem::replace(&mut ctx.pool, pool),
    };
    ctx.backend_thread = session.thread_id;
    ctx.backend_caps = session.capabilities;
    Ok(Step::Moved {
        backend: session.stream,
        lease,
        user: claim,
        left,
    })
}

/// A backend session of `pool` logged in for `login`, and only then the
/// client's OK (the backend's) at `seq`.
pub(super) async fn open_and_answer(
    client: &mut PacketStream,
    (pool, login, seq): (&Pool, &LoginRequest<'_>, u8),
    gate: &Gate<'_>,
    deadline: Deadline,
) -> Result<(BackendLease, crate::backend::BackendSession), LoginError> {
    let state = gate.state;
    let (lease, session) = login::open_backend(
        pool,
        login,
        seq,
        (state.config.connect_timeout(), &gate.shared.metrics),
        deadline,
    )
    .await?;
    gate.succeeded();
    client
        .write(seq, &session.ok)
        .await
        .map_err(|e| LoginError::client(e.into()))?;
    Ok((lease, session))
}

/// The session's handshake as `ctx` keeps it.
fn handshake_of(ctx: &SessionCtx) -> (CapabilityFlags, u32, u8, MariaDbCapabilities) {
    (
        ctx.capabilities,
        ctx.max_packet_size,
        ctx.charset,
        ctx.mariadb_capabilities,
    )
}

/// The handshake the new user's backend sessions log in with: the
/// session's (capabilities, max packet size, charset, MariaDB
/// capabilities) with the new user, database, charset and attributes.
pub(super) fn new_response(
    (capabilities, max_packet_size, charset, mariadb_capabilities): (
        CapabilityFlags,
        u32,
        u8,
        MariaDbCapabilities,
    ),
    request: &ChangeUser,
) -> HandshakeResponse {
    HandshakeResponse {
        capabilities,
        max_packet_size,
        charset: request
            .charset
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(charset),
        mariadb_capabilities,
        username: request.username.clone(),
        auth_response: Vec::new(),
        database: request.database.clone(),
        auth_plugin: None,
        connect_attrs: request.connect_attrs.clone(),
    }
}

/// A split pool: its first backend session, logged in as the new user,
/// before the old one is let go.
async fn to_split(
    client: &mut PacketStream,
    (ctx, request): (&mut SessionCtx, &ChangeUser),
    admitted: Admitted,
    gate: Gate<'_>,
    deadline: Deadline,
) -> Result<Step, LoginError> {
    let Admitted {
        password,
        claim,
        pool,
        seq,
    } = admitted;
    let pools = pool.sessions_split().cloned().expect("a split pool");
    let credential = Box::new(split::Credential {
        response: new_response(handshake_of(ctx), request),
        password,
        offered: ctx.offered,
        offered_mariadb: ctx.offered_mariadb,
    });
    let login = credential.request();
    let first = split::open_first(
        &pools,
        &login,
        seq,
        (gate.state, &gate.shared.metrics),
        deadline,
    )
    .await?;
    gate.succeeded();
    client
        .write(seq, first.1.ok())
        .await
        .map_err(|e| LoginError::client(e.into()))?;
    let span = tracing::Span::current();
    span.record("user", request.username.as_str());
    span.record("pool", pool.name.as_str());
    info!("COM_CHANGE_USER: moved the session to a split pool");
    let left = Left {
        thread_id: ctx.backend_thread,
        nonce: std::mem::take(&mut ctx.backend_nonce),
        capabilities: ctx.backend_caps,
        shape: ctx.shape(),
        pool: std::mem::replace(&mut ctx.pool, pool),
    };
    Ok(Step::Split {
        first,
        credential,
        pools,
        user: claim,
        left,
    })
}

#[cfg(test)]
mod tests;
