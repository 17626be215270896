//! Calling `route`: on the calling event loop while the policy's calls stay
//! short, else on a blocking thread with the full deadline; each call on a
//! fresh instance, or on a kept one when instances are reused (see
//! [`super::instances`]).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::Policy;
use super::attempt::Attempt;
use super::error::RouteError;

/// Epoch ticks (milliseconds) a call on an event loop may take before it
/// is interrupted and the policy's calls move to blocking threads.
const INLINE_TICKS: u64 = 5;

/// What one call cost.
#[derive(Debug, Clone, Copy)]
pub struct CallCost {
    /// Wall-clock time, instantiation included.
    pub duration: Duration,
    /// The most linear memory the instance had, in bytes.
    pub peak_memory: usize,
}

impl Policy {
    /// Calls `route`, waiting for a free call slot: on this thread (an
    /// event loop's) while the policy's calls stay short, else on a
    /// blocking thread.
    ///
    /// A call on the event loop gets [`INLINE_TICKS`] of its deadline (and
    /// only an instance that is ready, when instances are reused): one that
    /// runs longer is interrupted, and from then on this policy's calls run
    /// on blocking threads, that one again from the start with the full
    /// deadline. So a slow or hostile policy holds an event loop for a few
    /// milliseconds once, and a light one costs no thread hand-off.
    /// The same happens to a policy that waits in a WASI import (sleeps,
    /// polls): an event loop does not wait for a guest, so the call is
    /// dropped at its first wait and made again off the loop.
    ///
    /// Off the loop, the call's deadline covers waits too: a guest parked in
    /// a WASI import is dropped when its time is up, and its call slot is
    /// free again (see the module's documentation).
    pub async fn route(
        self: &Arc<Self>,
        user: &str,
        db: Option<&str>,
        client_addr: &str,
    ) -> Result<String, RouteError> {
        let permit = Arc::clone(&self.engine.permits)
            .acquire_owned()
            .await
            .map_err(|_| RouteError::Failed("policy engine is shutting down".into()))?;
        if self.on_event_loop.load(Ordering::Relaxed)
            && self.timeout_ticks > INLINE_TICKS
            && let Some(result) = self.route_on_event_loop(user, db, client_addr)
        {
            return result;
        }
        let this = Arc::clone(self);
        let (user, db, client_addr) = (
            user.to_owned(),
            db.map(str::to_owned),
            client_addr.to_owned(),
        );
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.route_blocking(&user, db.as_deref(), &client_addr)
        })
        .await
        .map_err(|e| RouteError::Failed(format!("policy call aborted: {e}")))?
    }

    /// The call on this event loop, with [`INLINE_TICKS`] of its deadline
    /// and without waiting: its answer, or `None` when it is to be made off
    /// the loop (no instance ready; or it ran too long or would wait, and
    /// then this policy's calls leave the event loop for good).
    fn route_on_event_loop(
        &self,
        user: &str,
        db: Option<&str>,
        client_addr: &str,
    ) -> Option<Result<String, RouteError>> {
        let attempt = without_waiting(self.attempt(INLINE_TICKS, true, user, db, client_addr));
        let why = match attempt {
            Some(Attempt {
                result: Some(result),
                interrupted: false,
                ..
            }) => return Some(result),
            Some(Attempt { result: None, .. }) => None,
            Some(_) => Some(format!("a call ran longer than {INLINE_TICKS} ms")),
            None => Some("it waits in a WASI call (a clock or a poll)".to_owned()),
        };
        // No instance ready (`None`): this call instantiates one, off
        // the event loop.
        if let Some(why) = why {
            self.on_event_loop.store(false, Ordering::Relaxed);
            tracing::warn!(
                policy = %self.shared.name,
                "{why} on an event loop; this policy's calls run on blocking threads from now on"
            );
        }
        None
    }

    /// Calls `route` on this thread: a fresh instance, a deadline, a memory
    /// limit. Not on an event loop's thread: this thread waits for the call
    /// (see [`block_on`]).
    pub fn route_blocking(
        &self,
        user: &str,
        db: Option<&str>,
        client_addr: &str,
    ) -> Result<String, RouteError> {
        self.route_measured(user, db, client_addr).0
    }

    /// [`Policy::route_blocking`], also returning what the call cost: its
    /// wall-clock time and the most linear memory it had.
    pub fn route_measured(
        &self,
        user: &str,
        db: Option<&str>,
        client_addr: &str,
    ) -> (Result<String, RouteError>, CallCost) {
        let started = Instant::now();
        let attempt = block_on(self.attempt_within_deadline(user, db, client_addr));
        let cost = CallCost {
            duration: started.elapsed(),
            peak_memory: attempt.peak,
        };
        let result = attempt
            .result
            .unwrap_or_else(|| Err(RouteError::Failed("no instance".into())));
        (result, cost)
    }

    /// The wall-clock time a call may take (a tick is a millisecond).
    pub(super) fn deadline(&self) -> Duration {
        Duration::from_millis(self.timeout_ticks)
    }

    /// One call with the full deadline, for running and for waiting: the
    /// epoch stops a guest that runs too long, and the call is dropped
    /// (the guest unwound) when the time is up while it waits in WASI.
    async fn attempt_within_deadline(
        &self,
        user: &str,
        db: Option<&str>,
        client_addr: &str,
    ) -> Attempt {
        let call = self.attempt(self.timeout_ticks, false, user, db, client_addr);
        tokio::time::timeout(self.deadline(), call)
            .await
            .unwrap_or_else(|_| Attempt::of(Err(wasmtime::Trap::Interrupt.into()), 0))
    }

    /// One call with an epoch deadline of `ticks`: on a fresh instance, or
    /// on a kept one (a new one, unless `ready_only`: then `result` is
    /// `None` when none is kept). Dropping the future before it ends
    /// unwinds the guest and drops its instance.
    async fn attempt(
        &self,
        ticks: u64,
        ready_only: bool,
        user: &str,
        db: Option<&str>,
        client_addr: &str,
    ) -> Attempt {
        let _ticking = self.engine.ticker.running();
        match self.reuse {
            None => self.call_fresh(ticks, (user, db, client_addr)).await,
            Some(max_calls) => {
                self.call_reused(max_calls, ticks, ready_only, (user, db, client_addr))
                    .await
            }
        }
    }

    /// A call on a new instance, dropped after it.
    async fn call_fresh(
        &self,
        ticks: u64,
        (user, db, client_addr): (&str, Option<&str>, &str),
    ) -> Attempt {
        let mut store = self.new_store();
        store.set_epoch_deadline(ticks);
        let raw = match self.pre.instantiate_async(&mut store).await {
            Ok(router) => router.call_route(&mut store, user, db, client_addr).await,
            Err(e) => Err(e),
        };
        Attempt::of(raw, store.data().limits.peak)
    }
}

/// Runs `call` (a policy call on an event loop) as far as it goes without
/// waiting: its answer, or `None` when the guest waits in a WASI import
/// (a clock, a poll), which an event loop does not wait for. The call is
/// then dropped here, which unwinds the guest.
pub(super) fn without_waiting<F: Future>(call: F) -> Option<F::Output> {
    let mut call = std::pin::pin!(call);
    match call.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(answer) => Some(answer),
        Poll::Pending => None,
    }
}

/// Runs `call` to its end on this thread, which waits for it: a blocking
/// thread of a tokio runtime (whose timers then serve the call), or a
/// thread outside any runtime (start-up, the command-line tools: then
/// wasmtime-wasi's own runtime serves it). Never on an event loop's thread.
pub(super) fn block_on<F: Future>(call: F) -> F::Output {
    wasmtime_wasi::runtime::in_tokio(call)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_waiting_takes_only_what_is_ready() {
        assert_eq!(without_waiting(async { 7 }), Some(7));
        assert_eq!(without_waiting(std::future::pending::<u8>()), None);
        let yields_once = async {
            tokio::task::yield_now().await;
            7
        };
        assert_eq!(without_waiting(yields_once), None);
    }

    #[test]
    fn block_on_runs_to_the_end_outside_a_runtime() {
        let slept = block_on(async {
            tokio::time::sleep(Duration::from_millis(2)).await;
            7
        });
        assert_eq!(slept, 7);
    }
}
