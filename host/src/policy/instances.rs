//! Reused instances: when a policy's instances are reused (`instances =
//! "reuse"`, or `"auto"` for a policy that is slow to instantiate), calls
//! take an idle instance from the policy's pool and give it back after,
//! unless the call trapped or the instance reached its number of calls.

use std::sync::Mutex;

use wasmtime::Store;

use super::Policy;
use super::attempt::Attempt;
use super::bindings::Router;
use super::error::RouteError;
use super::host::CallState;

/// An instance kept for further calls.
pub(super) struct Reusable {
    store: Store<CallState>,
    router: Router,
    calls: u32,
}

/// The instances waiting for a call, the most recently used first out.
pub(super) struct Idle<T>(Mutex<Vec<T>>);

impl<T> Idle<T> {
    pub(super) const fn new() -> Self {
        Self(Mutex::new(Vec::new()))
    }

    /// An idle instance, if there is one.
    pub(super) fn take(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Keeps `instance` for a further call.
    pub(super) fn give_back(&self, instance: T) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(instance);
    }
}

/// Whether an instance that has made `calls` calls, the last of which
/// answered `result`, is kept for another call.
fn keep_after(result: Option<&Result<String, RouteError>>, calls: u32, max_calls: u32) -> bool {
    // A trap may leave the instance in any state: never reuse it.
    let trapped = matches!(result, Some(Err(RouteError::Failed(_))));
    !trapped && calls < max_calls
}

impl Policy {
    /// A call on a kept instance (or a new one, kept afterwards unless it
    /// trapped or reached `max_calls`). An instance whose call is dropped
    /// is dropped with it, never kept.
    pub(super) async fn call_reused(
        &self,
        max_calls: u32,
        ticks: u64,
        ready_only: bool,
        (user, db, client_addr): (&str, Option<&str>, &str),
    ) -> Attempt {
        let mut instance = match self.idle.take() {
            Some(i) => i,
            None if ready_only => return Attempt::not_made(),
            None => match self.new_instance(ticks).await {
                Ok(i) => i,
                Err(attempt) => return attempt,
            },
        };
        let data = instance.store.data_mut();
        data.log_lines = 0;
        instance.store.set_epoch_deadline(ticks);
        let raw = instance
            .router
            .call_route(&mut instance.store, user, db, client_addr)
            .await;
        let attempt = Attempt::of(raw, instance.store.data().limits.peak);
        instance.calls += 1;
        if keep_after(attempt.result.as_ref(), instance.calls, max_calls) {
            self.idle.give_back(instance);
        }
        attempt
    }

    /// A new instance to keep, instantiated within an epoch deadline of
    /// `ticks`; the failed attempt if it could not be made.
    async fn new_instance(&self, ticks: u64) -> Result<Reusable, Attempt> {
        let mut store = self.new_store();
        store.set_epoch_deadline(ticks);
        match self.pre.instantiate_async(&mut store).await {
            Ok(router) => Ok(Reusable {
                store,
                router,
                calls: 0,
            }),
            Err(e) => Err(Attempt::of(Err(e), store.data().limits.peak)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_instances_last_in_first_out() {
        let idle = Idle::new();
        assert_eq!(idle.take(), None);
        idle.give_back(1);
        idle.give_back(2);
        assert_eq!(idle.take(), Some(2));
        assert_eq!(idle.take(), Some(1));
        assert_eq!(idle.take(), None);
    }

    #[test]
    fn kept_until_a_trap_or_the_last_call() {
        let pool = Ok("main".to_owned());
        let refused = Err(RouteError::Refused("no".into()));
        let failed = Err(RouteError::Failed("trap".into()));
        assert!(keep_after(Some(&pool), 1, 2));
        assert!(!keep_after(Some(&pool), 2, 2));
        assert!(keep_after(Some(&refused), 1, 2));
        assert!(!keep_after(Some(&failed), 1, 1000));
        assert!(keep_after(None, 0, 1));
    }
}
