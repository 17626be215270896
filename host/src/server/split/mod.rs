//! Statement-level routing: the sessions of a split pool (one that names a
//! `writer` and a `reader` pool) hold up to two backend sessions, one in
//! each, and send each command where the built-in rule
//! ([`crate::sql::rule`]) says, in lockstep: the next command is read only
//! once the last answer is whole ([`ReplyFramer`]), so that the status it
//! ended with (a transaction open, autocommit) and the state it reported
//! (session variables, schema, the writer's GTID) are known first.
//!
//! - The login opens the reader's backend session (so that the client hears
//!   OK only once a backend accepted the login); the writer's opens at the
//!   first statement that needs it. Each backend session opened later gets
//!   the session state replayed ([`route::Carried`]).
//! - Session state: learnt from state tracking where the client takes it
//!   (its backend sessions then report every variable:
//!   `session_track_system_variables = '*'`), else the session statements
//!   themselves, kept in order. A session statement runs on every open
//!   backend session.
//! - Causal reads: after the session writes, a read goes to a reader only
//!   once the monitor says it has applied the writer's GTID of that write.
//! - Prepared statements: see [`prepared`].

mod change_user;
pub(super) mod idle;
mod multiplex;
pub(crate) mod prepared;
mod route;
mod shared_statements;
mod wire;

pub(super) use change_user::{First, Rebound, open_first};

use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::time::Instant as Deadline;
use tracing::{debug, info, warn};

use super::kill::{self, Registration};
use super::login::{self, LoginError};
use super::{Shared, codes, relay};
use crate::auth::Sha1Password;
use crate::backend::{BackendSession, LoginRequest};
use crate::conn::ConnError;
use crate::metrics::{Borrow, Causal, Held, Routed};
use crate::pool::BackendLease;
use crate::protocol::{
    CapabilityFlags, ErrPacket, HandshakeResponse, MariaDbCapabilities, OkPacket, REPLY_HEAD,
    ReplyFramer, ReplyStep, ReplyTo, StatusFlags, state_changes,
};
use crate::sql::{Class, Kind, Pin, Target, classify, rule};
use prepared::Prepared;
use route::{Carried, LastWrite, Routing, Statuses};
use wire::{Frame, Wire};

/// The state tracking a split session's backend sessions report.
const TRACK_ALL: &str = "SET SESSION session_track_system_variables = '*'";
/// Packets of an answer nobody reads that are kept (the first ones).
const KEPT_PACKETS: usize = 8;

/// Which of a split session's backend sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// In the writer pool.
    Writer = 0,
    /// In the reader pool.
    Reader = 1,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Self::Writer => "writer",
            Self::Reader => "reader",
        }
    }

    fn other(self) -> Self {
        match self {
            Self::Writer => Self::Reader,
            Self::Reader => Self::Writer,
        }
    }

    fn routed(self) -> Routed {
        match self {
            Self::Writer => Routed::Writer,
            Self::Reader => Routed::Reader,
        }
    }
}

/// What a split session logs its backend sessions in with: the client's
/// handshake and `SHA1(password)`, kept for the session's life (the login
/// of a backend session opened later needs them).
pub(super) struct Credential {
    /// The client's handshake response.
    pub response: HandshakeResponse,
    /// `SHA1(password)`.
    pub password: Sha1Password,
    /// The capabilities offered the client.
    pub offered: CapabilityFlags,
    /// The MariaDB capabilities offered the client.
    pub offered_mariadb: MariaDbCapabilities,
}

impl Credential {
    /// The login of a backend session with this credential.
    pub fn request(&self) -> LoginRequest<'_> {
        LoginRequest {
            client: &self.response,
            password: &self.password,
            offered: self.offered,
            offered_mariadb: self.offered_mariadb,
        }
    }
}

/// One backend session of the client session.
struct Side {
    wire: Wire,
    lease: BackendLease,
    thread: u32,
    /// The status its last answer ended with.
    status: StatusFlags,
    /// The session state changed elsewhere since it was given this one.
    stale: bool,
    /// The capabilities it was opened with (the client's).
    caps: CapabilityFlags,
    /// A GTID this backend session's server is known to have applied.
    has: Option<crate::pool::gtid::Gtid>,
    /// The OK its login ended with (a login that borrows it answers with
    /// it: the same user, database, flags and character set).
    ok: Bytes,
    /// Its `LAST_INSERT_ID()`, unless a statement may have changed it
    /// since it was last known.
    last_insert_id: Option<u64>,
    /// The statements prepared on it for multiplexed sessions.
    stmts: prepared::Cache,
    /// The next answer, if it is the server's refusal for being read-only,
    /// is kept from the client (the statement is run again elsewhere).
    withhold_read_only: bool,
}

impl Side {
    fn new(session: BackendSession, lease: BackendLease) -> Self {
        let status = OkPacket::decode(&session.ok)
            .map(|ok| ok.status)
            .unwrap_or(StatusFlags::SERVER_STATUS_AUTOCOMMIT);
        let caps = session.capabilities;
        let ok = session.ok;
        let (stream, rest) = session.stream.into_parts();
        Self {
            wire: Wire::new(stream, rest),
            lease,
            thread: session.thread_id,
            status,
            stale: false,
            caps,
            has: None,
            ok,
            last_insert_id: Some(0),
            stmts: prepared::Cache::default(),
            withhold_read_only: false,
        }
    }

    fn place(&self) -> kill::Place {
        kill::Place {
            backend: self.lease.backend().addr,
            thread: self.thread,
        }
    }
}

/// What an answer was.
#[derive(Debug, Default)]
struct Answer {
    /// Its first packet.
    first: Option<Bytes>,
    /// It ended with an ERR.
    err: bool,
    /// The state changes its OK packets reported.
    changes: Vec<crate::protocol::StateChange>,
    /// Its first packets, when nobody else reads them.
    packets: Vec<Bytes>,
    /// The warnings its last packet counted.
    warnings: u16,
    /// The insert id its last OK reported.
    insert_id: u64,
    /// It was the server's refusal for being read-only, kept from the
    /// client (see [`Side::withhold_read_only`]).
    withheld: bool,
}

/// Why a command could not be run: the session ends, or the client gets
/// an ERR in place of the answer and the session goes on.
enum Failed {
    End(relay::End),
    Refused(ErrPacket),
}

impl From<relay::End> for Failed {
    fn from(end: relay::End) -> Self {
        Self::End(end)
    }
}

/// What the session runs with.
pub(super) struct Cx<'a> {
    pub shared: &'a std::sync::Arc<Shared>,
    pub registration: &'a Registration,
    pub timeouts: relay::Timeouts,
    /// The client's address and its listener's policy (COM_CHANGE_USER).
    pub peer: std::net::SocketAddr,
    pub policy: Option<&'a str>,
}

/// How a split session ended.
pub(super) enum Exit {
    /// The session is over.
    End(relay::End),
    /// COM_CHANGE_USER moved it to a plain pool: it goes on bound.
    Rebound(Box<Rebound>),
}

/// A split pool's client session.
pub(super) struct SplitSession {
    client: Wire,
    /// Boxed: a multiplexed session at rest holds none, and so keeps only
    /// two pointers' room.
    sides: [Option<Box<Side>>; 2],
    routing: Routing,
    carried: Carried,
    prepared: Prepared,
    credential: Box<Credential>,
    pools: std::sync::Arc<crate::pool::Split>,
    /// The backend sessions report state changes.
    tracked: bool,
    /// The greeting's nonce (COM_CHANGE_USER answers it).
    nonce: [u8; crate::auth::NONCE_LEN],
    /// The user's count of this session.
    user: super::limits::UserClaim,
    /// Set when COM_CHANGE_USER moved the session to a plain pool.
    rebound: Option<Box<Rebound>>,
    /// The current database, as far as known (the login's, then
    /// COM_INIT_DB's and the tracked schema).
    db: Option<String>,
    /// Bytes from and to the client.
    pub relayed: (u64, u64),
    /// Backend sessions are given back at rest (a multiplexed pool).
    multiplex: bool,
    /// The first backend session was borrowed at login: the state it has
    /// (see [`idle::Idle`]), for the session to give it its own.
    borrowed_first: Option<(Option<Carried>, u64)>,
    /// The session's `LAST_INSERT_ID()` as last known (it moves with the
    /// session from one backend session to the next).
    last_insert_id: u64,
    /// The backend session where `LAST_INSERT_ID()` may have changed last.
    last_insert_id_on: Option<Role>,
    /// The last answer had warnings (or was an ERR): the next statement
    /// may ask for them where it ran.
    warned: bool,
    /// Multiplexed: the id given the client's last prepared statement.
    last_statement_id: u32,
    /// Cancelled by a `KILL [CONNECTION]` naming the session while it is
    /// at rest.
    ends: tokio_util::sync::CancellationToken,
}

impl SplitSession {
    /// The session of `client`, logged in on `first` (of `role`).
    pub fn new(
        client: crate::conn::PacketStream,
        (role, first): (Role, First),
        (credential, nonce, user): (
            Box<Credential>,
            [u8; crate::auth::NONCE_LEN],
            super::limits::UserClaim,
        ),
        pools: std::sync::Arc<crate::pool::Split>,
        metrics: &crate::metrics::Metrics,
    ) -> Self {
        let (side, borrowed_first) = match first {
            First::Opened(session, lease) => (Box::new(Side::new(session, lease)), None),
            First::Borrowed(idle) => {
                let idle = *idle;
                (idle.side, Some((idle.carried, idle.last_insert_id)))
            }
        };
        let tracked = side.caps.contains(CapabilityFlags::CLIENT_SESSION_TRACK);
        let (stream, rest) = client.into_parts();
        let mut sides = [None, None];
        sides[role as usize] = Some(side);
        metrics
            .split
            .backend_sessions
            .fetch_add(1, Ordering::Relaxed);
        let db = credential.response.database.clone();
        Self {
            client: Wire::new(stream, rest),
            sides,
            routing: Routing::default(),
            carried: Carried::fresh(tracked),
            prepared: Prepared::default(),
            credential,
            tracked,
            nonce,
            user,
            rebound: None,
            db,
            relayed: (0, 0),
            multiplex: pools.multiplex,
            borrowed_first,
            last_insert_id: 0,
            last_insert_id_on: None,
            warned: false,
            last_statement_id: 0,
            ends: tokio_util::sync::CancellationToken::new(),
            pools,
        }
    }

    /// Forgets the session's state, statements and pin (COM_CHANGE_USER,
    /// COM_RESET_CONNECTION reset them on the server).
    fn forget(&mut self) {
        self.prepared.clear();
        self.routing.reset();
        self.carried = Carried::fresh(self.tracked);
    }

    /// Serves commands until the session ends (or goes on bound); why.
    pub async fn run(&mut self, cx: &Cx<'_>) -> Exit {
        let sessions = &cx.shared.metrics.split.client_sessions;
        sessions.fetch_add(1, Ordering::Relaxed);
        let end = self.serve(cx).await;
        sessions.fetch_sub(1, Ordering::Relaxed);
        match self.rebound.take() {
            Some(rebound) => Exit::Rebound(rebound),
            None => {
                Box::pin(self.close_all(cx)).await;
                Exit::End(end)
            }
        }
    }

    async fn serve(&mut self, cx: &Cx<'_>) -> relay::End {
        let opened = [Role::Writer, Role::Reader]
            .into_iter()
            .find(|r| self.sides[*r as usize].is_some());
        if let Some(role) = opened {
            cx.registration
                .moved(self.side(role).map(Side::place).expect("open"));
            let ready = match self.borrowed_first.take() {
                // A borrowed session that fails to take the client's state
                // is let go: the next statement borrows or opens another.
                Some((carried, lid)) => match Box::pin(self.adopt(role, carried, lid, cx)).await {
                    Err(Failed::Refused(_)) => Ok(()),
                    other => other,
                },
                None => Box::pin(self.set_up(role, cx)).await,
            };
            if let Err(e) = ready {
                return match e {
                    Failed::End(end) => end,
                    Failed::Refused(_) => relay::End::BackendReadFailed,
                };
            }
        }
        // The command's and the rest's states are boxed: the session's own
        // future, which an idle session keeps, is then small.
        loop {
            match Box::pin(self.rest(cx)).await {
                Ok(()) | Err(Failed::Refused(_)) => {}
                Err(Failed::End(end)) => break end,
            }
            let frame = match self.next_command(cx).await {
                Ok(frame) => frame,
                Err(end) => break end,
            };
            if frame.seq != 0 {
                info!(seq = frame.seq, "a command out of sequence; closing");
                break relay::End::ClientReadFailed;
            }
            match Box::pin(self.command(frame, cx)).await {
                Ok(()) => {}
                Err(Failed::End(end)) => break end,
                Err(Failed::Refused(err)) => {
                    if self.client.send(1, &err.encode()).await.is_err() {
                        break relay::End::ClientWriteFailed;
                    }
                }
            }
            self.client.shrink();
        }
    }

    fn side(&self, role: Role) -> Option<&Side> {
        self.sides[role as usize].as_deref()
    }

    fn statuses(&self) -> Statuses {
        Statuses {
            writer: self.side(Role::Writer).map(|s| s.status),
            reader: self.side(Role::Reader).map(|s| s.status),
        }
    }

    /// The client's next command, within the idle timeout; ends when the
    /// proxy stops.
    async fn next_command(&mut self, cx: &Cx<'_>) -> Result<Frame, relay::End> {
        let shared = cx.shared;
        let idle = async {
            match cx.timeouts.idle {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        let read = self.client.next();
        tokio::select! {
            frame = read => match frame {
                Ok(frame) => {
                    self.relayed.0 += 4 + frame.payload.len() as u64;
                    shared.metrics.bytes_from_clients.add(4 + frame.payload.len() as u64);
                    Ok(frame)
                }
                Err(ConnError::Closed) => Err(relay::End::ClientClosed),
                Err(_) => Err(relay::End::ClientReadFailed),
            },
            () = idle => {
                info!("session idle for too long; closing");
                shared.metrics.idle_closed.fetch_add(1, Ordering::Relaxed);
                Err(relay::End::IdleTimeout)
            }
            () = shared.stopping.cancelled() => Err(relay::End::Shutdown),
            () = self.ends.cancelled() => {
                info!("a KILL ended the session at rest");
                Err(relay::End::Killed)
            }
        }
    }

    /// Runs one command.
    async fn command(&mut self, frame: Frame, cx: &Cx<'_>) -> Result<(), Failed> {
        if frame.continues() {
            // A command over 16 MiB: to the writer, as it comes.
            return self.long_command(frame, cx).await;
        }
        let payload = frame.payload;
        match payload.first().copied() {
            Some(0x01) => Err(relay::End::ClientQuit.into()),
            Some(0x03) => self.query(payload, cx).await,
            Some(0x02) => {
                let db = String::from_utf8_lossy(&payload[1..]).into_owned();
                let sql = format!("USE `{}`", db.replace('`', "``"));
                if self.everywhere(payload.clone(), &sql, cx).await? {
                    self.db = Some(db);
                }
                Ok(())
            }
            Some(0x0c) => self.kill(payload, cx).await,
            Some(0x16..=0x1a | 0x1c) if self.multiplex => self.shared_statement(payload, cx).await,
            Some(0x16) => self.prepare(payload, cx).await,
            Some(0x17) => self.execute(payload, cx).await,
            Some(0x1c) => self.fetch(payload, cx).await,
            Some(0x18) => self.long_data(payload, cx).await,
            Some(0x19 | 0x1a) => self.close_or_reset(payload, cx).await,
            Some(0x1f) => self.reset_connection(payload, cx).await,
            Some(0x0e) => {
                let role = self.current();
                self.run_on(role, &payload, cx).await.map(|_| ())
            }
            Some(0x11) => self.change_user(payload, cx).await,
            _ => {
                let _ = self.ensure(Role::Writer, cx).await?;
                self.run_on(Role::Writer, &payload, cx).await.map(|_| ())
            }
        }
    }

    /// Where a command that may run anywhere goes: where the last one ran,
    /// else an open backend session.
    fn current(&self) -> Role {
        match self.routing.previous {
            Some(role) if self.side(role).is_some() => role,
            _ if self.side(Role::Reader).is_some() => Role::Reader,
            _ => Role::Writer,
        }
    }

    /// COM_QUERY: classified, routed by the rule.
    async fn query(&mut self, payload: Bytes, cx: &Cx<'_>) -> Result<(), Failed> {
        let registry = &cx.shared.sessions;
        if kill::place_named(&payload, registry).is_some()
            || kill::named(&payload).is_some_and(|(id, _)| registry.resting(id).is_some())
        {
            return self.kill(payload, cx).await;
        }
        let class = classify(&payload[1..]);
        let view = self.routing.view(self.statuses());
        let (target, _why) = match self.hook(&payload[1..], &class, &view, cx) {
            Some(target) => (target, "the policy's route-statement"),
            None => rule(&class, &view),
        };
        match target {
            Target::All => {
                let sql = String::from_utf8_lossy(&payload[1..]).into_owned();
                self.everywhere(payload, &sql, cx).await.map(|_| ())
            }
            Target::Writer => self.statement(Role::Writer, payload, &class, cx).await,
            Target::Reader => {
                let role = self.causal(cx).await?;
                self.statement(role, payload, &class, cx).await
            }
        }
    }

    /// Where the policy's `route-statement` sends a statement, if the
    /// policy has it and the statement may move: not session state, nor
    /// one that pins or reads the previous outcome, nor several statements,
    /// nor transaction control, nor in a pinned session; inside a
    /// transaction the policy is told, and the statement stays where the
    /// transaction runs. `None`: the built-in rule decides.
    fn hook(
        &self,
        text: &[u8],
        class: &Class,
        view: &crate::sql::SessionView,
        cx: &Cx<'_>,
    ) -> Option<Target> {
        let state = cx.shared.state();
        let policy = state.policy_named(cx.policy);
        if !policy.has_statement_hook()
            || view.pinned.is_some()
            || class.kind == Kind::Session
            || class.pin.is_some()
            || class.reads_previous
            || class.multi
            || class.transaction.is_some()
        {
            return None;
        }
        let max = state.config.policy.statement_text_max;
        let text = String::from_utf8_lossy(&text[..text.len().min(max)]);
        let response = &self.credential.response;
        let info = crate::policy::StatementInfo {
            kind: class.kind,
            in_transaction: view.in_transaction,
            read_only_transaction: view.read_only_transaction,
            digest: crate::sql::digest(text.as_bytes()),
            text: &text,
            user: &response.username,
            db: self.db.as_deref(),
            unseen_writes: self.routing.last_write != LastWrite::None,
        };
        let decision = match policy.route_statement(&info) {
            Ok(decision) => decision,
            Err(e) => {
                cx.shared
                    .metrics
                    .policy_errors
                    .fetch_add(1, Ordering::Relaxed);
                warn!(
                    policy = policy.name(),
                    "route-statement failed; the built-in rule decides: {e}"
                );
                return None;
            }
        };
        if view.in_transaction {
            return None;
        }
        use crate::policy::StatementDecision as D;
        match decision {
            D::Writer => Some(Target::Writer),
            D::Reader => Some(Target::Reader),
            D::Pool(name) if name == self.pools.writer => Some(Target::Writer),
            D::Pool(name) if name == self.pools.reader => Some(Target::Reader),
            D::Pool(name) => {
                debug!(pool = %crate::logging::escape_controls(&name), "route-statement named a pool that is not the split pool's writer or reader; the built-in rule decides");
                None
            }
            D::Builtin => None,
        }
    }

    /// Runs a classified statement on `role`'s backend session (a reader
    /// that cannot be had gives way to the writer) and learns from its
    /// answer.
    async fn statement(
        &mut self,
        role: Role,
        payload: Bytes,
        class: &Class,
        cx: &Cx<'_>,
    ) -> Result<(), Failed> {
        let role = self.ensure(role, cx).await?;
        let payload = match kill::translate(
            &payload,
            self.side(role).expect("open").lease.backend().addr,
            &cx.shared.sessions,
        ) {
            Some(t) => Bytes::from(t.payload),
            None => payload,
        };
        // A statement of a multiplexed session at rest that the writer
        // refuses for being read-only did not run: a planned switchover
        // under way. It runs on the new writer once the monitor shows it.
        let retry = self.multiplex
            && role == Role::Writer
            && !class.multi
            && self.held().is_none_or(|h| h == Held::Warnings);
        if let Some(side) = self.sides[role as usize].as_mut() {
            side.withhold_read_only = retry;
        }
        let mut answer = self.run_on(role, &payload, cx).await?;
        if answer.withheld {
            answer = self.on_new_writer(&payload, answer, cx).await?;
        }
        self.ran(role, class, &answer, cx).await;
        Ok(())
    }

    /// Learns from the answer to a statement of class `class` on `role`:
    /// the pin it sets, the writer's GTID whenever it reports one (a
    /// COMMIT's too; without tracking, a statement that may have written
    /// leaves it to be asked), the state it changed.
    async fn ran(&mut self, role: Role, class: &Class, answer: &Answer, cx: &Cx<'_>) {
        if let Some(pin) = class.pin {
            self.pin(pin, cx).await;
        }
        if role == Role::Writer
            && !self.routing.wrote(&answer.changes)
            && !self.tracked
            && may_write(class)
            && !answer.err
        {
            self.routing.last_write = LastWrite::Unknown;
        }
        self.learn(role, answer);
    }

    /// Session state (SET, USE, COM_INIT_DB): on the backend session the
    /// session is on, then on the other if it is open.
    async fn everywhere(&mut self, payload: Bytes, sql: &str, cx: &Cx<'_>) -> Result<bool, Failed> {
        let role = self.ensure(self.current(), cx).await?;
        let answer = self.run_on(role, &payload, cx).await?;
        cx.shared.metrics.split.routed(Routed::All);
        if answer.err {
            return Ok(false);
        }
        for change in &answer.changes {
            if let crate::protocol::StateChange::Schema(db) = change {
                self.db = Some(db.clone());
            }
        }
        if !self.carried.ran(sql, &answer.changes) {
            self.pin(Pin::SessionState, cx).await;
        }
        let other = role.other();
        match self.sides[other as usize].as_mut() {
            Some(side) if !side.stale => {
                let done = exchange(side, &payload, None, cx).await;
                if !matches!(done, Ok(ref a) if !a.err) {
                    debug!(
                        role = other.as_str(),
                        "session state failed on the other backend session; closing it"
                    );
                    self.close(other, cx).await;
                }
            }
            _ => {}
        }
        Ok(true)
    }

    /// Learns from an answer on `role`: the state it changed (the other
    /// backend session must get it before its next statement).
    fn learn(&mut self, role: Role, answer: &Answer) {
        for change in &answer.changes {
            if let crate::protocol::StateChange::Schema(db) = change {
                self.db = Some(db.clone());
            }
        }
        if self.carried.apply(&answer.changes)
            && let Some(other) = self.sides[role.other() as usize].as_mut()
        {
            other.stale = true;
        }
    }

    /// Pins the session to the writer: readers are let go.
    async fn pin(&mut self, why: Pin, cx: &Cx<'_>) {
        if self.routing.pinned.is_some() {
            return;
        }
        self.routing.pinned = Some(why);
        cx.shared.metrics.split.pinned(why);
        debug!(reason = why.label(), "session pinned to the writer");
        let reader_in_transaction = self
            .side(Role::Reader)
            .is_some_and(|s| s.status.contains(StatusFlags::SERVER_STATUS_IN_TRANS));
        if !reader_in_transaction {
            self.close(Role::Reader, cx).await;
        }
    }

    /// Where a read goes given the session's last write: a reader that has
    /// applied it (as the monitor says, or as a bounded
    /// `MASTER_GTID_WAIT` there finds), else the writer.
    async fn causal(&mut self, cx: &Cx<'_>) -> Result<Role, Failed> {
        if !self.pools.causal_reads || self.routing.last_write == LastWrite::None {
            return Ok(Role::Reader);
        }
        if self.routing.last_write == LastWrite::Unknown {
            self.routing.last_write = self.ask_last_gtid(cx).await?;
        }
        let metrics = &cx.shared.metrics.split;
        let gtid = match &self.routing.last_write {
            LastWrite::At(gtid) => *gtid,
            LastWrite::None => return Ok(Role::Reader),
            _ => {
                metrics.causal(Causal::Writer);
                return Ok(Role::Writer);
            }
        };
        if self.ensure(Role::Reader, cx).await? != Role::Reader {
            return Ok(Role::Writer);
        }
        let reader = self.side(Role::Reader).expect("open");
        if reader.has == Some(gtid) || reader.lease.backend().has_applied(&gtid) == Some(true) {
            metrics.causal(Causal::Reader);
        } else if !self.pools.causal_wait.is_zero() && self.wait_for(gtid, cx).await? {
            metrics.causal(Causal::Waited);
        } else {
            metrics.causal(Causal::Writer);
            return Ok(Role::Writer);
        }
        // A replica never loses a transaction it applied: no need to ask
        // again until the next write.
        if let Some(reader) = self.sides[Role::Reader as usize].as_mut() {
            reader.has = Some(gtid);
        }
        Ok(Role::Reader)
    }

    /// Whether the reader applies `gtid` within `causal_wait_ms`.
    async fn wait_for(
        &mut self,
        gtid: crate::pool::gtid::Gtid,
        cx: &Cx<'_>,
    ) -> Result<bool, Failed> {
        let seconds = self.pools.causal_wait.as_secs_f64();
        let sql = format!("\x03SELECT MASTER_GTID_WAIT('{gtid}', {seconds:.3})");
        let side = self.sides[Role::Reader as usize].as_mut().expect("open");
        let answer = exchange(side, sql.as_bytes(), None, cx).await?;
        Ok(!answer.err && first_value(&answer).as_deref() == Some("0"))
    }

    /// `@@last_gtid` of the writer's session: the GTID of its last write.
    async fn ask_last_gtid(&mut self, cx: &Cx<'_>) -> Result<LastWrite, Failed> {
        let Some(side) = self.sides[Role::Writer as usize].as_mut() else {
            return Ok(LastWrite::Untraceable);
        };
        let answer = exchange(side, b"\x03SELECT @@last_gtid", None, cx).await?;
        Ok(match first_value(&answer) {
            Some(v) if !answer.err => LastWrite::of(&v),
            _ => LastWrite::Untraceable,
        })
    }

    /// The backend session of `role`, opened (and given the session's
    /// state) if need be; a reader that cannot be had gives way to the
    /// writer. Which one it is.
    async fn ensure(&mut self, role: Role, cx: &Cx<'_>) -> Result<Role, Failed> {
        // One pool as writer and reader: one backend session does.
        let one_pool = self.pools.reader == self.pools.writer;
        let role = if role == Role::Reader && (self.routing.pinned.is_some() || one_pool) {
            Role::Writer
        } else {
            role
        };
        if self.side(role).is_none() {
            match self.open(role, cx).await {
                Ok(()) => {}
                Err(Failed::Refused(err)) if role == Role::Reader => {
                    info!(
                        code = err.code,
                        "no reader for a read; the writer answers it"
                    );
                    return Box::pin(self.ensure(Role::Writer, cx)).await;
                }
                Err(e) => return Err(e),
            }
        } else if self.side(role).is_some_and(|s| s.stale) {
            self.replay(role, cx).await?;
        }
        Ok(role)
    }

    /// Opens (or, multiplexed, borrows) the backend session of `role` in
    /// its pool and sets it up.
    async fn open(&mut self, role: Role, cx: &Cx<'_>) -> Result<(), Failed> {
        if self.multiplex {
            return self.borrow(role, cx).await;
        }
        self.open_new(role, cx).await
    }

    /// The name of the pool of `role`.
    fn pool_name(&self, role: Role) -> &str {
        match role {
            Role::Writer => &self.pools.writer,
            Role::Reader => &self.pools.reader,
        }
    }

    /// Opens a backend session of `role` in its pool and sets it up.
    async fn open_new(&mut self, role: Role, cx: &Cx<'_>) -> Result<(), Failed> {
        let shared = cx.shared;
        let state = shared.state();
        let name = match role {
            Role::Writer => &self.pools.writer,
            Role::Reader => &self.pools.reader,
        };
        let Some(pool) = state.pools.get(name) else {
            return Err(Failed::Refused(codes::no_backend(name, 0)));
        };
        let c = &self.credential;
        let request = c.request();
        let deadline = Deadline::now() + state.config.login_timeout();
        let opened = login::open_backend(
            pool,
            &request,
            1,
            (state.config.connect_timeout(), &shared.metrics),
            deadline,
        )
        .await;
        let (lease, session) = match opened {
            Ok(opened) => opened,
            Err(LoginError::Deny { err, reason, .. }) => {
                warn!(
                    role = role.as_str(),
                    "opening a backend session failed: {reason}"
                );
                return Err(Failed::Refused(err));
            }
            Err(LoginError::Close(reason)) => {
                warn!(
                    role = role.as_str(),
                    "opening a backend session failed: {reason}"
                );
                return Err(Failed::Refused(codes::no_backend(name, 1)));
            }
        };
        debug!(role = role.as_str(), backend = %lease.backend().addr, "backend session opened");
        shared
            .metrics
            .split
            .backend_sessions
            .fetch_add(1, Ordering::Relaxed);
        self.sides[role as usize] = Some(Box::new(Side::new(session, lease)));
        self.set_up(role, cx).await?;
        self.carry_last_insert_id(role, 0, cx).await
    }

    /// Turns on state tracking and gives the session state to the backend
    /// session of `role`.
    async fn set_up(&mut self, role: Role, cx: &Cx<'_>) -> Result<(), Failed> {
        if self.tracked {
            let side = self.sides[role as usize].as_mut().expect("open");
            let mut track = vec![0x03];
            track.extend_from_slice(TRACK_ALL.as_bytes());
            let answer = exchange(side, &track, None, cx).await?;
            if answer.err {
                warn!("the backend refused to track session state");
            }
        }
        self.replay(role, cx).await
    }

    /// Gives the session state to the backend session of `role`.
    async fn replay(&mut self, role: Role, cx: &Cx<'_>) -> Result<(), Failed> {
        let statements = match self.carried.replay() {
            Ok(s) => s,
            Err(e) => {
                warn!(?e, "session state that cannot be replayed");
                if role == Role::Reader {
                    self.pin(Pin::SessionState, cx).await;
                    return Err(Failed::Refused(codes::backend_unsupported(
                        "session state that cannot be replayed",
                    )));
                }
                Vec::new()
            }
        };
        self.run_state(role, statements, cx).await
    }

    /// Runs session statements on the backend session of `role` (a
    /// failure lets it go).
    async fn run_state(
        &mut self,
        role: Role,
        statements: Vec<String>,
        cx: &Cx<'_>,
    ) -> Result<(), Failed> {
        let side = self.sides[role as usize].as_mut().expect("open");
        for sql in statements {
            let mut payload = vec![0x03];
            payload.extend_from_slice(sql.as_bytes());
            let answer = exchange(side, &payload, None, cx).await?;
            if answer.err {
                warn!(
                    role = role.as_str(),
                    "replaying session state failed; closing that backend session"
                );
                self.close(role, cx).await;
                return Err(Failed::Refused(codes::backend_unsupported(
                    "the session state could not be given to another backend session",
                )));
            }
        }
        side.stale = false;
        Ok(())
    }

    /// Sends `payload` to the backend session of `role` (open) and relays
    /// its answer to the client.
    async fn run_on(&mut self, role: Role, payload: &[u8], cx: &Cx<'_>) -> Result<Answer, Failed> {
        self.run_renaming(role, payload, None, cx).await
    }

    /// [`Self::run_on`]; a COM_STMT_PREPARE's answer names the statement
    /// `rename` for the client.
    async fn run_renaming(
        &mut self,
        role: Role,
        payload: &[u8],
        rename: Option<u32>,
        cx: &Cx<'_>,
    ) -> Result<Answer, Failed> {
        let Some(side) = self.sides[role as usize].as_mut() else {
            return Err(Failed::Refused(codes::no_backend(role.as_str(), 0)));
        };
        if self.routing.previous != Some(role) {
            cx.registration.moved(side.place());
        }
        self.routing.previous = Some(role);
        if payload.first() == Some(&0x03) {
            cx.shared.metrics.split.routed(role.routed());
        }
        let before = self.relayed.1;
        let answer = exchange_renaming(
            side,
            payload,
            (Some((&mut self.client, &mut self.relayed.1)), rename),
            cx,
        )
        .await;
        cx.shared
            .metrics
            .bytes_to_clients
            .add(self.relayed.1 - before);
        cx.shared.metrics.bytes_from_clients.add(0);
        match answer {
            Ok(answer) => {
                self.outcome(role, payload, &answer);
                Ok(answer)
            }
            Err(Failed::End(end)) => Err(Failed::End(end)),
            Err(Failed::Refused(err)) => {
                self.close(role, cx).await;
                Err(Failed::Refused(err))
            }
        }
    }

    /// Learns what a client's command on `role` left that a later statement
    /// may read: warnings (read where it ran), `LAST_INSERT_ID()` (carried
    /// from one backend session to the next).
    fn outcome(&mut self, role: Role, payload: &[u8], answer: &Answer) {
        self.warned = answer.err || answer.warnings > 0;
        if answer.insert_id != 0 || may_set_last_insert_id(payload) {
            self.last_insert_id_may_change(role);
        }
    }

    /// A KILL naming a session by greeting id: run where that session runs
    /// now (one of this session's backend sessions, or a connection of its
    /// own to that server, logged in as this session's user).
    async fn kill(&mut self, payload: Bytes, cx: &Cx<'_>) -> Result<(), Failed> {
        if let Some((id, query)) = kill::named(&payload)
            && let Some(resting) = cx.shared.sessions.resting(id)
        {
            // A multiplexed session at rest: no statement runs; `KILL
            // [CONNECTION]` ends it. Answered as a server answers a KILL of
            // an idle thread, or, for another user's session, as it
            // answers a KILL without the privilege.
            if resting.user != *self.user.user() {
                return self
                    .client
                    .send(1, &codes::kill_denied(id).encode())
                    .await
                    .map_err(|_| Failed::End(relay::End::ClientWriteFailed));
            }
            if !query {
                resting.ends.cancel();
            }
            cx.shared
                .metrics
                .kills_translated
                .fetch_add(1, Ordering::Relaxed);
            let ok = OkPacket {
                affected_rows: 0,
                last_insert_id: 0,
                status: self
                    .sides
                    .iter()
                    .flatten()
                    .map(|s| s.status)
                    .next()
                    .unwrap_or(StatusFlags::SERVER_STATUS_AUTOCOMMIT),
                warnings: 0,
            };
            return self
                .client
                .send(1, &ok.encode())
                .await
                .map_err(|_| Failed::End(relay::End::ClientWriteFailed));
        }
        let place = kill::place_named(&payload, &cx.shared.sessions);
        let held = [Role::Writer, Role::Reader].into_iter().find(|r| {
            place.is_some_and(|p| {
                self.side(*r)
                    .is_some_and(|s| s.lease.backend().addr == p.backend)
            })
        });
        let role = match (place, held) {
            (_, Some(role)) => role,
            (Some(place), None) => return self.kill_elsewhere(payload, place, cx).await,
            (None, None) => self.ensure(Role::Writer, cx).await?,
        };
        let addr = self.side(role).expect("open").lease.backend().addr;
        let payload = kill::translate(&payload, addr, &cx.shared.sessions)
            .map(|t| Bytes::from(t.payload))
            .unwrap_or(payload);
        self.run_on(role, &payload, cx).await.map(|_| ())
    }

    /// A KILL for a session on a server this session holds no backend
    /// session of.
    async fn kill_elsewhere(
        &mut self,
        payload: Bytes,
        place: kill::Place,
        cx: &Cx<'_>,
    ) -> Result<(), Failed> {
        let state = cx.shared.state();
        let c = &self.credential;
        let request = c.request();
        let tls = state.pools.tls_for(place.backend);
        let opened = tokio::time::timeout(
            state.config.connect_timeout(),
            crate::backend::open(place.backend, &request, tls),
        )
        .await;
        let Ok(Ok(session)) = opened else {
            return Err(Failed::Refused(codes::no_backend("kill", 1)));
        };
        let Some(backend) = state.pools.backend(place.backend) else {
            return Err(Failed::Refused(codes::no_backend("kill", 1)));
        };
        let lease = BackendLease::claim(backend);
        let mut side = Side::new(session, lease);
        let payload = kill::translate(&payload, place.backend, &cx.shared.sessions)
            .map(|t| Bytes::from(t.payload))
            .unwrap_or(payload);
        let result = exchange(
            &mut side,
            &payload,
            Some((&mut self.client, &mut self.relayed.1)),
            cx,
        )
        .await;
        let _ = side.wire.send(0, &[0x01]).await;
        side.wire.shutdown().await;
        result.map(|_| ())
    }

    /// COM_STMT_PREPARE: on the writer; the client knows the writer's id.
    async fn prepare(&mut self, payload: Bytes, cx: &Cx<'_>) -> Result<(), Failed> {
        self.ensure(Role::Writer, cx).await?;
        let answer = self.run_on(Role::Writer, &payload, cx).await?;
        if let Some((id, params)) = answer.first.as_deref().and_then(prepared::prepare_ok) {
            self.prepared.prepared(id, params, payload.slice(1..));
        }
        Ok(())
    }

    /// COM_STMT_EXECUTE: where the rule sends the statement's text.
    async fn execute(&mut self, payload: Bytes, cx: &Cx<'_>) -> Result<(), Failed> {
        let Some(id) = prepared::id_of(&payload) else {
            self.ensure(Role::Writer, cx).await?;
            return self.run_on(Role::Writer, &payload, cx).await.map(|_| ());
        };
        let Some(statement) = self.prepared.get(id) else {
            // Not one this session knows (the id of the last prepared, -1):
            // the writer's.
            self.ensure(Role::Writer, cx).await?;
            return self.run_on(Role::Writer, &payload, cx).await.map(|_| ());
        };
        let class = statement.class;
        let (text, long_data) = (statement.text.clone(), statement.long_data);
        let view = self.routing.view(self.statuses());
        let target = self
            .hook(&text, &class, &view, cx)
            .unwrap_or_else(|| rule(&class, &view).0);
        let mut role = match target {
            Target::Reader if !long_data => self.causal(cx).await?,
            _ => Role::Writer,
        };
        role = self.ensure(role, cx).await?;
        if role == Role::Reader && !self.prepared_on_reader(id, cx).await? {
            role = self.ensure(Role::Writer, cx).await?;
        }
        let statement = self.prepared.get_mut(id).expect("known");
        let sent = statement.execute_for(&payload, role);
        statement.ran_on = Some(role);
        statement.long_data = false;
        let answer = self.run_on(role, &sent, cx).await?;
        if names_last_insert_id(&text) {
            self.last_insert_id_may_change(role);
        }
        self.ran(role, &class, &answer, cx).await;
        Ok(())
    }

    /// `LAST_INSERT_ID()` of the backend session of `role` may have changed
    /// (it is asked before the session goes to rest).
    fn last_insert_id_may_change(&mut self, role: Role) {
        if let Some(side) = self.sides[role as usize].as_mut() {
            side.last_insert_id = None;
        }
        self.last_insert_id_on = Some(role);
    }

    /// Whether statement `id` is prepared on the reader, preparing it there
    /// if need be.
    async fn prepared_on_reader(&mut self, id: u32, cx: &Cx<'_>) -> Result<bool, Failed> {
        let statement = self.prepared.get(id).expect("known");
        if statement.id_on(Role::Reader).is_some() {
            return Ok(true);
        }
        let mut payload = vec![0x16];
        payload.extend_from_slice(&statement.text);
        let side = self.sides[Role::Reader as usize].as_mut().expect("open");
        let answer = exchange(side, &payload, None, cx).await?;
        match answer.first.as_deref().and_then(prepared::prepare_ok) {
            Some((reader_id, _)) if !answer.err => {
                self.prepared
                    .get_mut(id)
                    .expect("known")
                    .prepared_on(Role::Reader, reader_id);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// COM_STMT_FETCH: where the statement was executed.
    async fn fetch(&mut self, payload: Bytes, cx: &Cx<'_>) -> Result<(), Failed> {
        let statement = prepared::id_of(&payload).and_then(|id| self.prepared.get(id));
        let (role, sent) = match statement.and_then(|s| Some((s.ran_on?, s))) {
            Some((role, s)) if self.side(role).is_some() => (role, s.for_backend(&payload, role)),
            _ => (Role::Writer, payload.to_vec()),
        };
        self.ensure(role, cx).await?;
        self.run_on(role, &sent, cx).await.map(|_| ())
    }

    /// COM_STMT_SEND_LONG_DATA: to the writer, where the next execution
    /// then runs. No answer.
    async fn long_data(&mut self, payload: Bytes, cx: &Cx<'_>) -> Result<(), Failed> {
        if let Some(s) = prepared::id_of(&payload).and_then(|id| self.prepared.get_mut(id)) {
            s.long_data = true;
        }
        self.ensure(Role::Writer, cx).await?;
        self.run_on(Role::Writer, &payload, cx).await.map(|_| ())
    }

    /// COM_STMT_CLOSE (no answer) and COM_STMT_RESET: on every backend
    /// session that has the statement; the client hears the writer's
    /// answer.
    async fn close_or_reset(&mut self, payload: Bytes, cx: &Cx<'_>) -> Result<(), Failed> {
        let close = payload[0] == 0x19;
        let Some(id) = prepared::id_of(&payload) else {
            return Err(relay::End::ClientReadFailed.into());
        };
        let ids = if close {
            self.prepared.close(id)
        } else {
            self.prepared.get_mut(id).map(|s| {
                s.long_data = false;
                [s.id_on(Role::Writer), s.id_on(Role::Reader)]
            })
        };
        let Some(ids) = ids else {
            // Unknown here: the writer answers as it would.
            self.ensure(Role::Writer, cx).await?;
            return self.run_on(Role::Writer, &payload, cx).await.map(|_| ());
        };
        if let (Some(reader_id), Some(side)) = (ids[1], self.sides[Role::Reader as usize].as_mut())
        {
            let mut sent = payload.to_vec();
            sent[1..5].copy_from_slice(&reader_id.to_le_bytes());
            if exchange(side, &sent, None, cx).await.is_err() {
                self.close(Role::Reader, cx).await;
            }
        }
        if ids[0].is_some() && self.side(Role::Writer).is_some() {
            self.run_on(Role::Writer, &payload, cx).await.map(|_| ())
        } else if close {
            Ok(())
        } else {
            // Reset a statement the writer no longer has: the reader's
            // answer was the one.
            let ok = OkPacket {
                affected_rows: 0,
                last_insert_id: 0,
                status: self
                    .statuses()
                    .writer
                    .unwrap_or(StatusFlags::SERVER_STATUS_AUTOCOMMIT),
                warnings: 0,
            };
            self.client
                .send(1, &ok.encode())
                .await
                .map_err(|_| Failed::End(relay::End::ClientWriteFailed))
        }
    }

    /// COM_RESET_CONNECTION: every backend session is reset; the session
    /// forgets its state, its statements and its pin.
    async fn reset_connection(&mut self, payload: Bytes, cx: &Cx<'_>) -> Result<(), Failed> {
        let role = self.current();
        self.ensure(role, cx).await?;
        let answer = self.run_on(role, &payload, cx).await?;
        self.forget();
        let other = role.other();
        if let Some(side) = self.sides[other as usize].as_mut()
            && !matches!(exchange(side, &payload, None, cx).await, Ok(a) if !a.err)
        {
            self.close(other, cx).await;
        }
        if answer.err {
            return Ok(());
        }
        // The reset dropped prepared statements and `LAST_INSERT_ID()`.
        self.last_insert_id = 0;
        for side in self.sides.iter_mut().flatten() {
            side.stmts.clear();
            side.last_insert_id = Some(0);
        }
        // The reset turned state tracking back to the server's default.
        for role in [Role::Writer, Role::Reader] {
            if self.sides[role as usize].is_some() {
                self.set_up(role, cx).await?;
            }
        }
        Ok(())
    }

    /// A command longer than one packet: to the writer, packet by packet.
    async fn long_command(&mut self, first: Frame, cx: &Cx<'_>) -> Result<(), Failed> {
        self.ensure(Role::Writer, cx).await?;
        let side = self.sides[Role::Writer as usize].as_mut().expect("open");
        let to = ReplyTo::of(&first.payload);
        let mut frame = first;
        loop {
            if side.wire.push(&frame).await.is_err() {
                return Err(relay::End::BackendWriteFailed.into());
            }
            if !frame.continues() {
                break;
            }
            frame = self
                .client
                .next()
                .await
                .map_err(|_| Failed::End(relay::End::ClientReadFailed))?;
            self.relayed.0 += 4 + frame.payload.len() as u64;
        }
        if side.wire.flush().await.is_err() {
            return Err(relay::End::BackendWriteFailed.into());
        }
        self.routing.previous = Some(Role::Writer);
        if !self.tracked {
            self.routing.last_write = LastWrite::Unknown;
        }
        let answer = answer_of(
            side,
            to,
            (Some((&mut self.client, &mut self.relayed.1)), None),
            cx,
        )
        .await?;
        self.routing.wrote(&answer.changes);
        self.learn(Role::Writer, &answer);
        self.outcome(Role::Writer, &[], &answer);
        self.last_insert_id_may_change(Role::Writer);
        Ok(())
    }

    /// Lets the backend session of `role` go (COM_QUIT). The writer's
    /// last write is asked for first, if not known yet: a later writer
    /// session would not know it.
    async fn close(&mut self, role: Role, cx: &Cx<'_>) {
        if role == Role::Writer
            && self.routing.last_write == LastWrite::Unknown
            && self.side(role).is_some()
        {
            self.routing.last_write = self
                .ask_last_gtid(cx)
                .await
                .unwrap_or(LastWrite::Untraceable);
        }
        let Some(side) = self.detach(role, cx) else {
            return;
        };
        idle::quit(*side).await;
        if self.multiplex {
            idle::room_freed(self.pool_name(role));
        }
    }

    /// Takes the backend session of `role` out of the session (closed or
    /// given back next): its statements' ids there are gone, and it is no
    /// longer where the last statement ran.
    fn detach(&mut self, role: Role, cx: &Cx<'_>) -> Option<Box<Side>> {
        let side = self.sides[role as usize].take()?;
        cx.shared
            .metrics
            .split
            .backend_sessions
            .fetch_sub(1, Ordering::Relaxed);
        self.prepared.lost(role);
        if self.routing.previous == Some(role) {
            self.routing.previous = None;
        }
        Some(side)
    }

    async fn close_all(&mut self, cx: &Cx<'_>) {
        self.close(Role::Writer, cx).await;
        self.close(Role::Reader, cx).await;
        let _ = self.client.flush().await;
        self.client.shutdown().await;
    }
}

/// The one value of a one-row, one-column text result nobody else read.
fn first_value(answer: &Answer) -> Option<String> {
    // Column count, definition, (EOF), the row, the end.
    let row = answer.packets.get(answer.packets.len().checked_sub(2)?)?;
    let mut r = crate::protocol::Reader::new(row);
    let value = r.lenenc_bytes("value").ok()?;
    String::from_utf8(value.to_vec()).ok()
}

/// The warnings and insert id an answer's last packet reports (an OK, an
/// EOF, or, with CLIENT_DEPRECATE_EOF, an OK in place of an EOF).
fn counts(last: &[u8], deprecate_eof: bool) -> (u16, u64) {
    match last.first() {
        Some(0xfe) if !deprecate_eof => {
            let warnings = last
                .get(1..3)
                .map_or(0, |w| u16::from_le_bytes([w[0], w[1]]));
            (warnings, 0)
        }
        Some(0x00 | 0xfe) => {
            OkPacket::decode(last).map_or((0, 0), |ok| (ok.warnings, ok.last_insert_id))
        }
        _ => (0, 0),
    }
}

/// Whether a command may change `LAST_INSERT_ID()` other than through its
/// OK's insert id: a text naming the function (`LAST_INSERT_ID(expr)` sets
/// it). An execution's statement text is looked at where it is known
/// ([`names_last_insert_id`]).
fn may_set_last_insert_id(payload: &[u8]) -> bool {
    match payload.first() {
        Some(0x03) => names_last_insert_id(&payload[1..]),
        _ => false,
    }
}

/// Whether a statement's text names `LAST_INSERT_ID`.
fn names_last_insert_id(text: &[u8]) -> bool {
    text.windows(14)
        .any(|w| w.eq_ignore_ascii_case(b"LAST_INSERT_ID"))
}

/// Whether a statement may have written: not a read, nor transaction
/// control (the writes of a transaction were counted as they ran; its
/// GTID comes with COMMIT).
fn may_write(class: &Class) -> bool {
    use crate::sql::Transaction;
    class.kind != Kind::Read
        && !matches!(
            class.transaction,
            Some(Transaction::Begin { .. } | Transaction::End | Transaction::Autocommit(_))
        )
}

/// Where an answer's packets go: the client (and the count of bytes sent
/// it), or nowhere.
type Sink<'a> = Option<(&'a mut Wire, &'a mut u64)>;

/// Sends `payload` (a command, sequence 0) to `side` and reads its answer,
/// relaying it to `sink`.
async fn exchange(
    side: &mut Side,
    payload: &[u8],
    sink: Sink<'_>,
    cx: &Cx<'_>,
) -> Result<Answer, Failed> {
    exchange_renaming(side, payload, (sink, None), cx).await
}

/// [`exchange`], the statement id of a COM_STMT_PREPARE answer's first
/// packet replaced with `rename` (the id the client knows) on its way.
async fn exchange_renaming(
    side: &mut Side,
    payload: &[u8],
    (sink, rename): (Sink<'_>, Option<u32>),
    cx: &Cx<'_>,
) -> Result<Answer, Failed> {
    if side.wire.send(0, payload).await.is_err() {
        // Lost before the command reached it: for the client's own
        // command, an ERR in place of the answer and the session ends (as
        // a bound session's does); for the proxy's, that side is let go.
        let addr = side.lease.backend().addr;
        return Err(match sink {
            Some(_) => lost(relay::End::BackendWriteFailed, false, addr, sink, cx).await,
            None => Failed::Refused(codes::backend_lost(addr)),
        });
    }
    answer_of(side, ReplyTo::of(payload), (sink, rename), cx).await
}

/// Reads the answer (of shape `to`) from `side`, relaying it to `sink`.
async fn answer_of(
    side: &mut Side,
    to: ReplyTo,
    (mut sink, rename): (Sink<'_>, Option<u32>),
    cx: &Cx<'_>,
) -> Result<Answer, Failed> {
    let deprecate_eof = side.caps.contains(CapabilityFlags::CLIENT_DEPRECATE_EOF);
    let mut framer = ReplyFramer::new(to, deprecate_eof, side.status);
    let mut answer = Answer::default();
    if framer.is_done() {
        return Ok(answer);
    }
    let addr = side.lease.backend().addr;
    let mut relayed_any = false;
    loop {
        let mut frame = match side.wire.buffered() {
            Some(frame) => frame,
            None => {
                if let Some((client, _)) = sink.as_mut()
                    && client.flush().await.is_err()
                {
                    return Err(relay::End::ClientWriteFailed.into());
                }
                match read_backend(side, cx).await {
                    Ok(frame) => frame,
                    Err(end) => {
                        if end == relay::End::QueryTimeout {
                            super::runaway::kill(cx.shared, addr, side.thread);
                        }
                        return Err(lost(end, relayed_any, addr, sink, cx).await);
                    }
                }
            }
        };
        let original = frame.payload.clone();
        let payload = &original;
        let step = match framer.packet(payload.len(), &payload[..payload.len().min(REPLY_HEAD)]) {
            Ok(step) => step,
            Err(e) => {
                warn!(backend = %addr, error = %e, "an answer the proxy cannot follow; closing");
                return Err(relay::End::BackendReadFailed.into());
            }
        };
        if answer.first.is_none() && withheld(side, payload) {
            answer.first = Some(frame.payload.clone());
            answer.err = true;
            answer.withheld = true;
            side.wire.shrink();
            return Ok(answer);
        }
        if answer.first.is_none() {
            answer.first = Some(frame.payload.clone());
            if let Some(id) = rename
                && frame.payload.first() == Some(&0)
            {
                frame.payload = prepared::with_id(&frame.payload, id);
            }
        }
        if framer.was_ok()
            && let Ok(changes) = state_changes(payload, side.caps)
        {
            answer.changes.extend(changes);
        }
        match sink.as_mut() {
            Some((client, count)) => {
                **count += 4 + payload.len() as u64;
                relayed_any = true;
                if client.push(&frame).await.is_err() {
                    return Err(relay::End::ClientWriteFailed.into());
                }
            }
            None if answer.packets.len() < KEPT_PACKETS => {
                answer.packets.push(frame.payload.clone())
            }
            None => {}
        }
        match step {
            ReplyStep::More => {}
            ReplyStep::WaitsForClient => {
                let Some((client, _)) = sink.as_mut() else {
                    return Err(relay::End::BackendReadFailed.into());
                };
                infile(client, side).await?;
            }
            ReplyStep::Done(status) => {
                side.status = status;
                answer.err = payload.first() == Some(&0xff);
                (answer.warnings, answer.insert_id) = counts(payload, deprecate_eof);
                if let Some((client, _)) = sink.as_mut()
                    && client.flush().await.is_err()
                {
                    return Err(relay::End::ClientWriteFailed.into());
                }
                side.wire.shrink();
                return Ok(answer);
            }
        }
    }
}

/// Whether `first`, an answer's first packet, is the server's refusal for
/// being read-only that `side` was told to keep from the client (told for
/// this answer only).
fn withheld(side: &mut Side, first: &[u8]) -> bool {
    std::mem::take(&mut side.withhold_read_only)
        && first.first() == Some(&0xff)
        && first.get(1..3) == Some(&codes::OPTION_PREVENTS_STATEMENT.to_le_bytes()[..])
}

/// The client's `LOCAL INFILE` data, to its empty packet, to `side`.
async fn infile(client: &mut Wire, side: &mut Side) -> Result<(), Failed> {
    if client.flush().await.is_err() {
        return Err(relay::End::ClientWriteFailed.into());
    }
    loop {
        let frame = client
            .next()
            .await
            .map_err(|_| Failed::End(relay::End::ClientReadFailed))?;
        let last = frame.payload.is_empty();
        if side.wire.push(&frame).await.is_err() {
            return Err(relay::End::BackendWriteFailed.into());
        }
        if last {
            break;
        }
    }
    if side.wire.flush().await.is_err() {
        return Err(relay::End::BackendWriteFailed.into());
    }
    Ok(())
}

/// The next packet from the backend, within the query timeout; ends when
/// the proxy stops now.
async fn read_backend(side: &mut Side, cx: &Cx<'_>) -> Result<Frame, relay::End> {
    let timeout = async {
        match cx.timeouts.query {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        frame = side.wire.next() => match frame {
            Ok(frame) => Ok(frame),
            Err(ConnError::Closed) => Err(relay::End::BackendClosed),
            Err(_) => Err(relay::End::BackendReadFailed),
        },
        () = timeout => Err(relay::End::QueryTimeout),
        () = cx.shared.force_stop.cancelled() => Err(relay::End::Shutdown),
    }
}

/// A backend lost (or silent, or the proxy stopping) under an answer: the
/// client gets an ERR in its place if none of it was sent.
async fn lost(
    end: relay::End,
    relayed_any: bool,
    addr: std::net::SocketAddr,
    sink: Sink<'_>,
    cx: &Cx<'_>,
) -> Failed {
    let Some((client, _)) = sink else {
        return Failed::Refused(codes::backend_lost(addr));
    };
    if relayed_any {
        return Failed::End(end);
    }
    let err = match end {
        relay::End::QueryTimeout => {
            let ms = cx.timeouts.query.unwrap_or_default().as_millis() as u64;
            warn!(backend = %addr, query_timeout_ms = ms, "the backend sent nothing for query_timeout_ms while a command waited; closing the session");
            codes::query_timeout(addr, ms)
        }
        relay::End::Shutdown => codes::shutting_down(),
        _ => {
            warn!(backend = %addr, "backend session lost while a command waited for its answer");
            codes::backend_lost(addr)
        }
    };
    let _ = client.send(1, &err.encode()).await;
    Failed::End(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_packet_counts_warnings_and_the_insert_id() {
        // EOF: 0xfe, warnings, status.
        assert_eq!(counts(&[0xfe, 3, 0, 2, 0], false), (3, 0));
        // With CLIENT_DEPRECATE_EOF the end is an OK with 0xfe in front:
        // affected rows, insert id, status, warnings.
        assert_eq!(counts(&[0xfe, 0, 0, 2, 0, 1, 0], true), (1, 0));
        // An OK: affected rows 1, insert id 42, status, 2 warnings.
        assert_eq!(counts(&[0x00, 1, 42, 2, 0, 2, 0], false), (2, 42));
        assert_eq!(counts(&[0xff, 0x15, 0x04], false), (0, 0));
        assert_eq!(counts(&[], true), (0, 0));
    }

    #[test]
    fn a_text_naming_last_insert_id_may_set_it() {
        assert!(may_set_last_insert_id(b"\x03SELECT last_insert_id(7)"));
        assert!(!may_set_last_insert_id(b"\x17\x01\x00\x00\x00"));
        assert!(names_last_insert_id(b"SELECT LAST_INSERT_ID(?)"));
        assert!(!may_set_last_insert_id(b"\x03SELECT 1"));
        assert!(!may_set_last_insert_id(b"\x0e"));
    }
}
