//! The policy engine: loads a routing policy (a WebAssembly component of the
//! `router` world) and calls its `route` export for each login.
//!
//! One wasmtime `Engine` (component model, epoch interruption, pooling
//! allocator) per set of call limits, shared by every policy loaded with
//! them, so that a swapped-in policy shares instance slots, call slots and
//! the epoch ticker with the one it replaces. Each component is compiled once
//! (cached in memory by its SHA-256, and on disk under `cache_dir` keyed by
//! its SHA-256 and the engine's compatibility hash), checked (it must export
//! `route` and import nothing but WASI and the `host` interface), and
//! pre-instantiated; each call gets a fresh `Store` with a deadline and a
//! memory limit. The guest gets WASI only from an empty context: no
//! files, sockets, environment or args. At most `max_concurrent_calls`
//! calls run at once: on the calling event loop while the policy's calls
//! stay short, else on tokio's blocking threads (see [`Policy::route`]).
//!
//! The deadline has two halves, because a guest spends its time in two
//! places. While it runs wasm, epoch interruption traps it (a ticker thread
//! advances the epoch every millisecond). While it waits in a WASI import
//! (a `wasi:clocks` pollable it blocks on, `wasi:io/poll`), no wasm runs and
//! no epoch check happens: so calls are async (wasmtime runs the guest on a
//! fiber, and WASI's waits are futures), and the call's future is dropped
//! when the deadline passes, which unwinds the guest. Taking the waiting
//! imports away instead would not do: language runtimes (Python, Go,
//! JavaScript) import `wasi:io/poll` and the clocks whatever the policy
//! does, and a list of the imports that can wait would have to follow every
//! WASI release; a deadline around the whole call covers any of them.

mod attempt;
mod bindings;
mod cache;
mod call;
mod engine;
mod error;
mod host;
mod instances;
mod load;
mod statement;
mod ticker;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use wasmtime::Store;

pub use cache::{Origin, sha256_hex};
pub use call::CallCost;
pub use error::{MAX_ANSWER_LEN, PolicyLoadError, RouteError};
pub use host::PoolSource;
pub use statement::{StatementDecision, StatementInfo};

use bindings::RouterPre;
use engine::PolicyEngine;
use host::{CallState, Shared};
use instances::{Idle, Reusable};

/// A loaded routing policy, ready to be called.
pub struct Policy {
    engine: Arc<PolicyEngine>,
    pre: RouterPre<CallState>,
    shared: Arc<Shared>,
    timeout_ticks: u64,
    hash: String,
    origin: Origin,
    imports: Vec<String>,
    /// `Some(max calls per instance)` when instances are reused.
    reuse: Option<u32>,
    idle: Idle<Reusable>,
    instantiation: Duration,
    /// Whether calls still run on the calling event loop (see
    /// [`Policy::route`]).
    on_event_loop: AtomicBool,
    /// `route-statement`, if the policy exports it.
    statement: Option<statement::Hook>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("name", &self.shared.name)
            .field("sha256", &self.hash)
            .finish()
    }
}

impl Policy {
    /// The policy's name (its file name).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The SHA-256 of the module, hex.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// Where its compiled code came from.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The interfaces it imports.
    pub fn imports(&self) -> &[String] {
        &self.imports
    }

    /// How long one instantiation takes (measured at load).
    pub fn instantiation_time(&self) -> Duration {
        self.instantiation
    }

    /// Whether instances are reused between calls.
    pub fn reuses_instances(&self) -> bool {
        self.reuse.is_some()
    }

    /// A store for one instance: the call's state, its memory limit.
    fn new_store(&self) -> Store<CallState> {
        let state = CallState::new(self.engine.memory_limit, Arc::clone(&self.shared));
        let mut store = Store::new(&self.engine.engine, state);
        store.limiter(|s| &mut s.limits);
        store
    }
}
