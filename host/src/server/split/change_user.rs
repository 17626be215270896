//! COM_CHANGE_USER in a split pool's session: the new user is admitted
//! through the login gate (as any COM_CHANGE_USER is); every backend
//! session the client session holds is let go, and the session goes on as
//! the new user: in the pool the policy chooses for it, split or not (a
//! plain pool's session continues bound to one backend session: the
//! relay's). Its state, statements and pin start afresh, as a server's
//! COM_CHANGE_USER resets them.

use bytes::{Bytes, BytesMut};
use tokio::time::{Instant as Deadline, timeout_at};
use tracing::info;

use super::{Credential, Cx, Failed, Role, Side, SplitSession, Wire};
use crate::backend::{BackendSession, LoginRequest};
use crate::conn::{PacketStream, Stream};
use crate::metrics::ChangeUserOutcome;
use crate::pool::{BackendLease, Pool};
use crate::protocol::ChangeUser;
use crate::server::login::{self, Admitted, Bound, Gate, LoginError, Services, SessionCtx};
use crate::server::relay;

/// Largest COM_CHANGE_USER exchange packet accepted.
const MAX_CHANGE_USER_PACKET: usize = 16 * 1024;

/// Where a split session goes after COM_CHANGE_USER to a plain pool.
pub(in crate::server) struct Rebound {
    /// The streams and claims, bound to the new backend session.
    pub bound: Bound,
    /// What COM_CHANGE_USER needs of it later.
    pub ctx: SessionCtx,
}

/// A split pool's session's first backend session.
pub(in crate::server) enum First {
    /// Opened for this login (or a kept session taken over).
    Opened(BackendSession, BackendLease),
    /// An idle one of a multiplexed pool, logged in as the same user
    /// already: the login costs no backend login.
    Borrowed(Box<super::idle::Idle>),
}

impl First {
    /// The OK the client's login is answered with: the one the backend
    /// session's own login (of the same user, database, flags and
    /// character set) ended with.
    pub fn ok(&self) -> &[u8] {
        match self {
            Self::Opened(session, _) => &session.ok,
            Self::Borrowed(idle) => &idle.side.ok,
        }
    }

    /// The backend.
    pub fn backend(&self) -> std::net::SocketAddr {
        match self {
            Self::Opened(_, lease) => lease.backend().addr,
            Self::Borrowed(idle) => idle.side.lease.backend().addr,
        }
    }
}

/// Where a split session's first backend session may be: the reader's
/// pool, then the writer's; one pool that is both (a multiplexed pool with
/// backends of its own) is the writer's.
fn first_sides(pools: &crate::pool::Split) -> Vec<(Role, &String)> {
    if pools.reader == pools.writer {
        vec![(Role::Writer, &pools.writer)]
    } else {
        vec![(Role::Reader, &pools.reader), (Role::Writer, &pools.writer)]
    }
}

/// An idle backend session of a multiplexed split pool for a login (the
/// reader pool's first); when both pools are at their `max_connections`,
/// closes an idle one of another key to make room, or waits for one up to
/// `multiplex_wait_ms` (and `deadline`), then refuses. `None`: a backend
/// session is to be opened.
async fn borrow_first(
    pools: &crate::pool::Split,
    (request, seq): (&LoginRequest<'_>, u8),
    (state, metrics): (&crate::server::State, &crate::metrics::Metrics),
    deadline: Deadline,
) -> Result<Option<(Role, First)>, LoginError> {
    use crate::protocol::CapabilityFlags as Caps;
    let tracked = request
        .client
        .capabilities
        .contains(Caps::CLIENT_SESSION_TRACK)
        && request.offered.contains(Caps::CLIENT_SESSION_TRACK);
    let fresh = super::route::Carried::fresh(tracked);
    let db = request.client.database.as_deref();
    let sides = first_sides(pools);
    let deadline = deadline.min(Deadline::now() + pools.multiplex_wait);
    let mut waited = false;
    loop {
        let mut full = true;
        for &(role, name) in &sides {
            let Some(pool) = state.pools.get(name) else {
                continue;
            };
            if let Some(idle) = super::multiplex::take_idle(pool, (request, db), &fresh, metrics) {
                if waited {
                    metrics.multiplex.waited(true);
                    super::idle::pass_on(&pools.reader);
                    super::idle::pass_on(&pools.writer);
                }
                return Ok(Some((role, First::Borrowed(Box::new(idle)))));
            }
            full &= pool.is_full() && !super::idle::evict(name, metrics);
        }
        if !full {
            return Ok(None);
        }
        if Deadline::now() >= deadline {
            metrics.multiplex.waited(false);
            let ms = pools.multiplex_wait.as_millis() as u64;
            return Err(LoginError::deny(
                crate::server::codes::pool_full(&pools.writer, ms),
                seq,
                crate::metrics::Outcome::NoBackend,
                format!(
                    "split pool sides '{}' / '{}' full for {ms} ms",
                    pools.reader, pools.writer
                ),
            ));
        }
        waited = true;
        super::idle::returned(&[&pools.reader, &pools.writer], deadline).await;
    }
}

/// The first backend session of a split pool's session: in the reader pool
/// or, if none can be had there, the writer pool; for a multiplexed pool,
/// an idle one of the same user if there is one.
pub(in crate::server) async fn open_first(
    pools: &crate::pool::Split,
    request: &LoginRequest<'_>,
    seq: u8,
    (state, metrics): (&crate::server::State, &crate::metrics::Metrics),
    deadline: Deadline,
) -> Result<(Role, First), LoginError> {
    if pools.multiplex
        && let Some(first) = borrow_first(pools, (request, seq), (state, metrics), deadline).await?
    {
        return Ok(first);
    }
    for (role, name) in first_sides(pools) {
        let Some(pool) = state.pools.get(name) else {
            continue;
        };
        let attempt = login::open_backend(
            pool,
            request,
            seq,
            (state.config.connect_timeout(), metrics),
            deadline,
        )
        .await;
        match attempt {
            Ok((lease, backend)) => return Ok((role, First::Opened(backend, lease))),
            Err(LoginError::Deny {
                outcome: crate::metrics::Outcome::NoBackend,
                ..
            }) if role == Role::Reader => {
                info!("no reader for a split pool's session; trying the writer");
            }
            Err(e) => return Err(e),
        }
    }
    Err(LoginError::deny(
        crate::server::codes::no_backend(&pools.writer, 0),
        seq,
        crate::metrics::Outcome::NoBackend,
        format!(
            "no backend for split pool sides '{}' / '{}'",
            pools.reader, pools.writer
        ),
    ))
}

impl SplitSession {
    /// Handles the COM_CHANGE_USER `payload`: `Ok` to go on (split), or
    /// the session's end (`Failed::End(End::ChangeUser)` with
    /// [`Self::rebound`] set when it goes on in a plain pool).
    pub(super) async fn change_user(&mut self, payload: Bytes, cx: &Cx<'_>) -> Result<(), Failed> {
        // The gate's exchange may switch plugins: it speaks packets.
        let wire = std::mem::replace(
            &mut self.client,
            Wire::new(Stream::Upgrading, BytesMut::new()),
        );
        let (stream, rest) = wire.into_parts();
        let mut client = PacketStream::from_parts(stream, rest, MAX_CHANGE_USER_PACKET);
        let state = cx.shared.state();
        let deadline = Deadline::now() + state.config.login_timeout();
        let outcome = timeout_at(
            deadline,
            self.admit(&payload, &mut client, &state, cx, deadline),
        )
        .await;
        let metrics = &cx.shared.metrics;
        let failed = match outcome {
            Ok(Ok(None)) => {
                metrics.change_user(ChangeUserOutcome::Moved);
                let (stream, rest) = client.into_parts();
                self.client = Wire::new(stream, rest);
                let first = [Role::Reader, Role::Writer]
                    .into_iter()
                    .find(|r| self.side(*r).is_some());
                if let Some(role) = first {
                    match self.borrowed_first.take() {
                        Some((carried, lid)) => match self.adopt(role, carried, lid, cx).await {
                            Err(Failed::Refused(_)) | Ok(()) => {}
                            Err(end) => return Err(end),
                        },
                        None => self.set_up(role, cx).await?,
                    }
                }
                return Ok(());
            }
            Ok(Ok(Some(rebound))) => {
                metrics.change_user(ChangeUserOutcome::Moved);
                // The client's stream went with the rebound session.
                self.rebound = Some(Box::new(rebound));
                return Err(Failed::End(relay::End::ChangeUser));
            }
            Ok(Err(e)) => Some(e),
            Err(_) => None,
        };
        crate::server::change_user::give_up(failed, &mut client, metrics).await;
        let (stream, rest) = client.into_parts();
        self.client = Wire::new(stream, rest);
        Err(Failed::End(relay::End::ChangeUser))
    }

    /// Verifies and routes the new user, lets the backend sessions go and
    /// logs in to the new pool; the client hears OK last. `None`: the
    /// session goes on split.
    async fn admit(
        &mut self,
        payload: &[u8],
        client: &mut PacketStream,
        state: &crate::server::State,
        cx: &Cx<'_>,
        deadline: Deadline,
    ) -> Result<Option<Rebound>, LoginError> {
        let caps = self.credential.response.capabilities;
        let request = ChangeUser::decode(payload, caps)
            .map_err(|e| LoginError::Close(format!("bad COM_CHANGE_USER: {e}")))?;
        let attempt = crate::server::change_user::attempt(&request, caps, &self.nonce);
        let gate = Gate {
            shared: cx.shared,
            state,
            peer: cx.peer,
            policy: cx.policy,
        };
        let Admitted {
            password,
            claim,
            pool,
            seq,
        } = login::admit(client, &gate, attempt, request.database.as_deref()).await?;
        // Every backend session of the old user goes.
        self.close(Role::Writer, cx).await;
        self.close(Role::Reader, cx).await;
        let credential = self.credential_for(&request, password);
        let login = credential.request();
        let metrics = &cx.shared.metrics;
        let span = tracing::Span::current();
        span.record("pool", pool.name.as_str());
        let Some(pools) = pool.sessions_split().cloned() else {
            let (lease, session) = crate::server::change_user::open_and_answer(
                client,
                (&pool, &login, seq),
                &gate,
                deadline,
            )
            .await?;
            info!("COM_CHANGE_USER: the session goes on in a plain pool");
            return Ok(Some(self.rebound_to(
                client,
                (lease, session),
                (claim, pool, &credential),
            )));
        };
        let (role, first) = open_first(&pools, &login, seq, (state, metrics), deadline).await?;
        gate.succeeded();
        client
            .write(seq, first.ok())
            .await
            .map_err(|e| LoginError::client(e.into()))?;
        info!(pool = %pool.name, "COM_CHANGE_USER: the split session goes on as the new user");
        metrics
            .split
            .backend_sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let side = match first {
            First::Opened(session, lease) => Box::new(Side::new(session, lease)),
            First::Borrowed(idle) => {
                let idle = *idle;
                self.borrowed_first = Some((idle.carried, idle.last_insert_id));
                idle.side
            }
        };
        self.sides[role as usize] = Some(side);
        self.db = credential.response.database.clone();
        self.credential = credential;
        self.multiplex = pools.multiplex;
        self.pools = pools;
        self.user = claim;
        self.forget();
        Ok(None)
    }

    /// The credential the new user's backend sessions log in with: the
    /// session's handshake with the new user, database and charset.
    fn credential_for(
        &self,
        request: &ChangeUser,
        password: crate::auth::Sha1Password,
    ) -> Box<Credential> {
        let old = &self.credential.response;
        let response = crate::server::change_user::new_response(
            (
                old.capabilities,
                old.max_packet_size,
                old.charset,
                old.mariadb_capabilities,
            ),
            request,
        );
        Box::new(Credential {
            response,
            password,
            offered: self.credential.offered,
            offered_mariadb: self.credential.offered_mariadb,
        })
    }

    /// The session, bound to `session` in `pool`, for the relay.
    fn rebound_to(
        &mut self,
        client: &mut PacketStream,
        (lease, session): (BackendLease, BackendSession),
        (claim, pool, credential): (
            crate::server::limits::UserClaim,
            std::sync::Arc<Pool>,
            &Credential,
        ),
    ) -> Rebound {
        let client = std::mem::replace(
            client,
            PacketStream::from_parts(Stream::Upgrading, BytesMut::new(), MAX_CHANGE_USER_PACKET),
        );
        let response = &credential.response;
        let ctx = SessionCtx {
            backend_thread: session.thread_id,
            nonce: self.nonce,
            capabilities: response.capabilities,
            mariadb_capabilities: response.mariadb_capabilities,
            max_packet_size: response.max_packet_size,
            charset: response.charset,
            offered: credential.offered,
            offered_mariadb: credential.offered_mariadb,
            pool,
            backend_nonce: session.nonce.into_boxed_slice(),
            backend_caps: session.capabilities,
        };
        Rebound {
            bound: Bound::new((client, session.stream), lease, claim),
            ctx,
        }
    }
}
