//! The per-statement hook: `route-statement`, the optional export of a
//! policy built for the `statement-router` world. The host calls it for
//! each statement of a split pool's session, on this thread (an event
//! loop's), on an instance kept between calls, without waiting: a call
//! that would wait in WASI, runs past [`HOOK_TICKS`] or traps answers
//! nothing (the caller then applies the built-in rule) and its instance is
//! dropped. A policy without the export costs no call.

use std::sync::atomic::{AtomicU32, Ordering};

use wasmtime::Store;

use super::Policy;
use super::bindings::statement::{
    Decision, Statement, StatementKind, StatementRouter, StatementRouterPre,
};
use super::call::without_waiting;
use super::error::RouteError;
use super::host::CallState;
use super::instances::Idle;

/// Epoch ticks (milliseconds) one statement's call may take (as a login's
/// call on an event loop: a thread preempted mid-call needs the margin).
const HOOK_TICKS: u64 = 5;
/// Calls an instance makes before it is replaced (its memory only grows).
const CALLS_PER_INSTANCE: u32 = 100_000;
/// Failed calls in a row after which the hook is no longer called (each
/// failure costs a new instance on an event loop).
const FAILURES_TO_GIVE_UP: u32 = 8;

/// The hook of a policy that has one: its pre-instantiation and its kept
/// instances.
pub(super) struct Hook {
    pre: StatementRouterPre<CallState>,
    idle: Idle<(Store<CallState>, StatementRouter, u32)>,
    /// Failed calls in a row.
    failures: AtomicU32,
}

impl Hook {
    /// The hook of the component `pre` instantiates, if it exports
    /// `route-statement`.
    pub(super) fn of(pre: &super::bindings::RouterPre<CallState>) -> Option<Self> {
        let pre = StatementRouterPre::new(pre.instance_pre().clone()).ok()?;
        Some(Self {
            pre,
            idle: Idle::new(),
            failures: AtomicU32::new(0),
        })
    }

    /// The same hook, with no instance kept (a rebound policy).
    pub(super) fn fresh(&self) -> Self {
        Self {
            pre: self.pre.clone(),
            idle: Idle::new(),
            failures: AtomicU32::new(0),
        }
    }
}

/// What the host knows of a statement (see the WIT's `statement`).
#[derive(Debug, Clone, Copy)]
pub struct StatementInfo<'a> {
    /// The host's classification.
    pub kind: crate::sql::Kind,
    /// A transaction is open.
    pub in_transaction: bool,
    /// The open transaction is read-only, on a reader.
    pub read_only_transaction: bool,
    /// The digest of its normalized text.
    pub digest: u64,
    /// Its text (already cut to `statement_text_max`).
    pub text: &'a str,
    /// The session's user.
    pub user: &'a str,
    /// The session's database, as far as known.
    pub db: Option<&'a str>,
    /// Writes a reader may not have yet.
    pub unseen_writes: bool,
}

/// Where the hook sends a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatementDecision {
    /// The writer.
    Writer,
    /// A reader.
    Reader,
    /// The pool of this name (the split pool's writer or reader pool).
    Pool(String),
    /// The built-in rule.
    Builtin,
}

impl Policy {
    /// Whether the policy exports `route-statement` (and it has not
    /// failed [`FAILURES_TO_GIVE_UP`] times in a row).
    pub fn has_statement_hook(&self) -> bool {
        self.statement
            .as_ref()
            .is_some_and(|h| h.failures.load(Ordering::Relaxed) < FAILURES_TO_GIVE_UP)
    }

    /// Calls `route-statement` for `info` (see the module's documentation);
    /// [`StatementDecision::Builtin`] for a policy without the hook.
    pub fn route_statement(
        &self,
        info: &StatementInfo<'_>,
    ) -> Result<StatementDecision, RouteError> {
        let Some(hook) = &self.statement else {
            return Ok(StatementDecision::Builtin);
        };
        let answer = self.call_hook(hook, info);
        match &answer {
            Ok(_) => hook.failures.store(0, Ordering::Relaxed),
            Err(_) => {
                if hook.failures.fetch_add(1, Ordering::Relaxed) + 1 == FAILURES_TO_GIVE_UP {
                    tracing::warn!(policy = %self.shared.name, "route-statement failed {FAILURES_TO_GIVE_UP} times in a row; the built-in rule decides from now on (until the policy is reloaded)");
                }
            }
        }
        answer
    }

    fn call_hook(
        &self,
        hook: &Hook,
        info: &StatementInfo<'_>,
    ) -> Result<StatementDecision, RouteError> {
        let _ticking = self.engine.ticker.running();
        let (mut store, router, calls) = match hook.idle.take() {
            Some(kept) => kept,
            None => {
                let mut store = self.new_store();
                store.set_epoch_deadline(self.timeout_ticks);
                let router = without_waiting(hook.pre.instantiate_async(&mut store))
                    .ok_or_else(|| failed("instantiating it waits in WASI"))?
                    .map_err(|e| failed(&format!("instantiating it failed: {e:#}")))?;
                (store, router, 0)
            }
        };
        store.set_epoch_deadline(HOOK_TICKS);
        let statement = Statement {
            kind: match info.kind {
                crate::sql::Kind::Read => StatementKind::Read,
                crate::sql::Kind::Session => StatementKind::Session,
                crate::sql::Kind::Write => StatementKind::Write,
            },
            in_transaction: info.in_transaction,
            read_only_transaction: info.read_only_transaction,
            digest: info.digest,
            text: info.text.to_owned(),
            user: info.user.to_owned(),
            db: info.db.map(str::to_owned),
            unseen_writes: info.unseen_writes,
        };
        let decision = match without_waiting(router.call_route_statement(&mut store, &statement)) {
            Some(Ok(decision)) => decision,
            // The instance is dropped: a trap may leave it in any state.
            Some(Err(e)) => return Err(failed(&format!("{e:#}"))),
            None => return Err(failed("it waits in WASI")),
        };
        if calls + 1 < CALLS_PER_INSTANCE {
            hook.idle.give_back((store, router, calls + 1));
        }
        Ok(match decision {
            Decision::Writer => StatementDecision::Writer,
            Decision::Reader => StatementDecision::Reader,
            Decision::Pool(name) => StatementDecision::Pool(name),
            Decision::Builtin => StatementDecision::Builtin,
        })
    }
}

fn failed(why: &str) -> RouteError {
    RouteError::Failed(format!("route-statement: {why}"))
}
