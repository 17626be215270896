//! Multiplexing (a split pool's `multiplex`): a client session at rest —
//! no transaction open, autocommit on, not pinned, no binary-protocol
//! prepared statement, and no warning its last statement left for the next
//! to read — gives its backend sessions back ([`idle`]) after each command;
//! its next statement borrows one of the same pool, backend, user,
//! database, flags and character set, and gives it the session's state:
//!
//! - the same carried state (the common case: every client of an
//!   application pool sets the same): nothing to do;
//! - a backend session whose state the session's only adds to (none at
//!   all, the same variables with other values, fewer of them): only what
//!   differs ([`Carried::replay_from`]);
//! - one of other state, or of state not known: COM_RESET_CONNECTION (the
//!   server forgets variables, user variables, temporary tables, prepared
//!   statements and `LAST_INSERT_ID()`, not the database), COM_INIT_DB to
//!   the session's database (the key's), then state tracking and the
//!   session's state (which may change the database again);
//! - and `LAST_INSERT_ID()`, which moves with the session: asked of the
//!   backend session before it is given back when a statement may have
//!   changed it, set on the next one (`SELECT LAST_INSERT_ID(n)`) when it
//!   differs.
//!
//! What is not carried keeps the session from resting: a transaction and
//! what pins (temporary tables, locks, user variables, SQL `PREPARE`, ...)
//! keep the backend sessions to their end; warnings (and errors) keep them
//! for the statement after, which may read them.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use tokio::time::Instant as Deadline;
use tracing::{debug, warn};

use super::idle::{self, Idle};
use super::route::{Carried, LastWrite};
use super::{Borrow, Cx, Failed, Held, Role, Side, SplitSession, exchange, first_value};
use crate::backend::LoginRequest;
use crate::pool::Pool;
use crate::protocol::StatusFlags;
use crate::server::codes;
use crate::server::reuse::Shape;

/// What makes an idle backend session of `pool` on `backend` fit a session
/// logged in with `request`, now in `db`.
pub(super) fn key(
    pool: &str,
    backend: SocketAddr,
    request: &LoginRequest<'_>,
    db: Option<&str>,
) -> idle::Key {
    let client = request.client;
    idle::Key {
        pool: pool.to_owned(),
        backend,
        user: client.username.clone(),
        db: db.map(str::to_owned),
        shape: Shape::of(
            (client.capabilities, request.offered),
            (client.mariadb_capabilities, request.offered_mariadb),
        ),
        charset: client.charset,
    }
}

/// An idle backend session of `pool` that fits a session of `request` in
/// `db`, preferring one with the state `carried`.
pub(super) fn take_idle(
    pool: &Pool,
    (request, db): (&LoginRequest<'_>, Option<&str>),
    carried: &Carried,
    metrics: &crate::metrics::Metrics,
) -> Option<Idle> {
    pool.borrowable().into_iter().find_map(|member| {
        let key = key(&pool.name, member.backend.addr, request, db);
        idle::take(&key, carried, metrics)
    })
}

impl Carried {
    /// A session's state before any session statement.
    pub(super) fn fresh(tracked: bool) -> Self {
        if tracked {
            Self::Tracked(Default::default())
        } else {
            Self::Logged(Vec::new())
        }
    }
}

impl SplitSession {
    /// Why the session keeps its backend sessions after a command, if it
    /// does.
    pub(super) fn held(&self) -> Option<Held> {
        if self.routing.pinned.is_some() {
            return Some(Held::Pinned);
        }
        for side in self.sides.iter().flatten() {
            if side.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS) {
                return Some(Held::Transaction);
            }
            if !side.status.contains(StatusFlags::SERVER_STATUS_AUTOCOMMIT) {
                return Some(Held::AutocommitOff);
            }
        }
        if self.prepared.holds() {
            return Some(Held::Prepared);
        }
        if self.warned {
            return Some(Held::Warnings);
        }
        None
    }

    /// Between commands: a multiplexed session at rest gives its backend
    /// sessions back, once it knows what of theirs it keeps (the writer's
    /// last GTID, `LAST_INSERT_ID()`).
    pub(super) async fn rest(&mut self, cx: &Cx<'_>) -> Result<(), Failed> {
        if !self.multiplex || self.sides.iter().all(Option::is_none) {
            return Ok(());
        }
        if let Some(why) = self.held() {
            cx.shared.metrics.multiplex.held(why);
            return Ok(());
        }
        if self.routing.last_write == LastWrite::Unknown && self.side(Role::Writer).is_some() {
            self.routing.last_write = match self.ask_last_gtid(cx).await {
                Ok(last) => last,
                Err(e) => {
                    self.close(Role::Writer, cx).await;
                    return Err(e);
                }
            };
        }
        for role in [Role::Writer, Role::Reader] {
            if let Err(e) = self.learn_last_insert_id(role, cx).await {
                self.close(role, cx).await;
                return Err(e);
            }
        }
        self.release(Role::Writer, cx);
        self.release(Role::Reader, cx);
        cx.registration.rests(&self.ends, self.user.user());
        self.client.rest();
        Ok(())
    }

    /// Asks the backend session of `role` its `LAST_INSERT_ID()` if a
    /// statement may have changed it.
    async fn learn_last_insert_id(&mut self, role: Role, cx: &Cx<'_>) -> Result<(), Failed> {
        let Some(side) = self.sides[role as usize].as_mut() else {
            return Ok(());
        };
        if side.last_insert_id.is_some() {
            return Ok(());
        }
        let answer = exchange(side, b"\x03SELECT LAST_INSERT_ID()", None, cx).await?;
        let value = first_value(&answer).and_then(|v| v.parse::<u64>().ok());
        side.last_insert_id = value.filter(|_| !answer.err);
        if self.last_insert_id_on == Some(role)
            && let Some(v) = side.last_insert_id
        {
            self.last_insert_id = v;
        }
        Ok(())
    }

    /// Gives the backend session of `role` back (idle, for any session of
    /// the same key to borrow).
    fn release(&mut self, role: Role, cx: &Cx<'_>) {
        let Some(side) = self.detach(role, cx) else {
            return;
        };
        let Some(last_insert_id) = side.last_insert_id else {
            tokio::spawn(idle::quit(*side));
            return;
        };
        let state = cx.shared.state();
        let name = self.pool_name(role);
        let max = state
            .pools
            .get(name)
            .map_or(std::time::Duration::ZERO, |p| p.idle_session_max);
        let carried = (!side.stale).then(|| self.carried.clone());
        let request = self.credential.request();
        let key = key(
            name,
            side.lease.backend().addr,
            &request,
            self.db.as_deref(),
        );
        idle::put(
            key,
            Idle::new(side, carried, last_insert_id, max),
            &cx.shared.metrics,
        );
    }

    /// Borrows an idle backend session of `role`'s pool, or opens one;
    /// when every backend of the pool is at its `max_connections`, waits
    /// up to `multiplex_wait_ms` for one to come free.
    pub(super) async fn borrow(&mut self, role: Role, cx: &Cx<'_>) -> Result<(), Failed> {
        let state = cx.shared.state();
        let name = self.pool_name(role).to_owned();
        let Some(pool) = state.pools.get(&name).cloned() else {
            return Err(Failed::Refused(codes::no_backend(&name, 0)));
        };
        let metrics = &cx.shared.metrics.multiplex;
        let wait = self.pools.multiplex_wait;
        let deadline = Deadline::now() + wait;
        let mut waited = false;
        loop {
            if !waited && idle::queued(&name) {
                // Behind the statements already waiting.
                waited = true;
                idle::returned(&[&name], deadline).await;
            }
            let request = self.credential.request();
            let found = take_idle(
                &pool,
                (&request, self.db.as_deref()),
                &self.carried,
                &cx.shared.metrics,
            );
            if let Some(idle) = found {
                let Idle {
                    side,
                    carried,
                    last_insert_id,
                    ..
                } = idle;
                self.install(role, side, cx);
                match self.adopt(role, carried, last_insert_id, cx).await {
                    Ok(()) => {
                        if waited {
                            metrics.waited(true);
                            idle::pass_on(&name);
                        }
                        return Ok(());
                    }
                    // That one is let go; the next is tried.
                    Err(Failed::Refused(_)) => continue,
                    Err(end) => return Err(end),
                }
            }
            if role == Role::Writer
                && !pool.is_full()
                && pool.candidates().is_empty()
                && Deadline::now() < deadline
            {
                // No writer qualifies now (a switchover under way: the old
                // one read-only, the new one not yet seen by the monitor):
                // the statement waits for one.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
            if !pool.is_full() || idle::evict(&name, &cx.shared.metrics) {
                let opened = self.open_new(role, cx).await;
                if opened.is_ok() {
                    metrics.borrowed(Borrow::Opened);
                    if waited {
                        metrics.waited(true);
                        idle::pass_on(&name);
                    }
                }
                return opened;
            }
            if Deadline::now() >= deadline {
                metrics.waited(false);
                let ms = wait.as_millis() as u64;
                warn!(pool = %name, multiplex_wait_ms = ms, "no backend session came free for a statement");
                return Err(Failed::Refused(codes::pool_full(&name, ms)));
            }
            waited = true;
            idle::returned(&[&name], deadline).await;
        }
    }

    /// The writer refused a statement of the session at rest for being
    /// read-only (`refused`, kept from the client): it did not run. The
    /// backend no longer counts as a writer; the statement runs on the
    /// writer the pool finds next (the monitor's next round shows the
    /// promoted one), within `multiplex_wait_ms`; else the client gets the
    /// refusal.
    pub(super) async fn on_new_writer(
        &mut self,
        payload: &[u8],
        refused: super::Answer,
        cx: &Cx<'_>,
    ) -> Result<super::Answer, Failed> {
        if let Some(side) = self.side(Role::Writer) {
            let backend = side.lease.backend();
            warn!(backend = %backend.addr, "the writer refused a statement for being read-only; it runs on the next writer");
            backend.set_replication(Some(true), backend.lag());
        }
        self.close(Role::Writer, cx).await;
        let deadline = Deadline::now() + self.pools.multiplex_wait;
        loop {
            match self.ensure(Role::Writer, cx).await {
                Ok(_) => return self.run_on(Role::Writer, payload, cx).await,
                Err(Failed::Refused(_)) if Deadline::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(Failed::Refused(_)) => {
                    let err = refused.first.clone().unwrap_or_default();
                    self.client
                        .send(1, &err)
                        .await
                        .map_err(|_| Failed::End(crate::server::relay::End::ClientWriteFailed))?;
                    return Ok(refused);
                }
                Err(end) => return Err(end),
            }
        }
    }

    /// Takes `side` as the backend session of `role`.
    fn install(&mut self, role: Role, side: Box<Side>, cx: &Cx<'_>) {
        cx.shared
            .metrics
            .split
            .backend_sessions
            .fetch_add(1, Ordering::Relaxed);
        self.sides[role as usize] = Some(side);
    }

    /// Gives the borrowed backend session of `role` (whose state was
    /// `carried`, its `LAST_INSERT_ID()` `last_insert_id`) the session's
    /// state; on failure it is let go.
    pub(super) async fn adopt(
        &mut self,
        role: Role,
        carried: Option<Carried>,
        last_insert_id: u64,
        cx: &Cx<'_>,
    ) -> Result<(), Failed> {
        let no_statements = self.side(role).is_some_and(|s| s.stmts.is_empty());
        let (how, adding) = match &carried {
            Some(c) if *c == self.carried => (Borrow::Same, Vec::new()),
            // Statements prepared under one state are not kept under
            // another: those sessions are reset.
            Some(c) if no_statements => match self.carried.replay_from(c) {
                Some(Ok(adding)) => (Borrow::Replayed, adding),
                _ => (Borrow::Reset, Vec::new()),
            },
            _ => (Borrow::Reset, Vec::new()),
        };
        match self
            .give_state(role, (how, adding), last_insert_id, cx)
            .await
        {
            Ok(()) => {
                cx.shared.metrics.multiplex.borrowed(how);
                Ok(())
            }
            Err(e) => {
                debug!(
                    role = role.as_str(),
                    "a borrowed backend session did not take the session's state; let go"
                );
                self.close(role, cx).await;
                Err(e)
            }
        }
    }

    async fn give_state(
        &mut self,
        role: Role,
        (how, adding): (Borrow, Vec<String>),
        mut last_insert_id: u64,
        cx: &Cx<'_>,
    ) -> Result<(), Failed> {
        match how {
            Borrow::Same | Borrow::Opened => {}
            Borrow::Replayed => self.run_state(role, adding, cx).await?,
            Borrow::Reset => {
                let side = self.sides[role as usize].as_mut().expect("open");
                let answer = exchange(side, &[0x1f], None, cx).await?;
                if answer.err {
                    return Err(Failed::Refused(codes::backend_unsupported(
                        "a backend session could not be reset",
                    )));
                }
                side.stmts.clear();
                last_insert_id = 0;
                // The reset keeps the database: back to the session's
                // (its replayed state may change it again).
                let Some(db) = self.db.clone() else {
                    return Err(Failed::Refused(codes::backend_unsupported(
                        "a backend session cannot be taken back to no database",
                    )));
                };
                let mut init_db = vec![0x02];
                init_db.extend_from_slice(db.as_bytes());
                let side = self.sides[role as usize].as_mut().expect("open");
                let answer = exchange(side, &init_db, None, cx).await?;
                if answer.err {
                    return Err(Failed::Refused(codes::backend_unsupported(
                        "a reset backend session could not take the session's database",
                    )));
                }
                self.set_up(role, cx).await?;
            }
        }
        self.carry_last_insert_id(role, last_insert_id, cx).await
    }

    /// Gives the backend session of `role`, whose `LAST_INSERT_ID()` is
    /// `has`, the session's.
    pub(super) async fn carry_last_insert_id(
        &mut self,
        role: Role,
        has: u64,
        cx: &Cx<'_>,
    ) -> Result<(), Failed> {
        let want = self.last_insert_id;
        let side = self.sides[role as usize].as_mut().expect("open");
        if has != want {
            let sql = format!("\x03SELECT LAST_INSERT_ID({want})");
            let answer = exchange(side, sql.as_bytes(), None, cx).await?;
            if answer.err {
                return Err(Failed::Refused(codes::backend_unsupported(
                    "LAST_INSERT_ID() could not be given to a backend session",
                )));
            }
        }
        side.last_insert_id = Some(want);
        Ok(())
    }
}
